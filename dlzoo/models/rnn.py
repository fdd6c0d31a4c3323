"""Lecture 10-4's recurrent Lego: an image read row by row as a sequence (28 steps of 28 pixels), stacked
recurrent layers, and a linear head on the last step's output."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from torch import Tensor, nn

from dlzoo.models.norm_dropout import DROPOUTS
from dlzoo.registry import Registry

CELLS: Registry[Callable[..., nn.Module]] = Registry("cell", "model.cell")
CELLS.register("rnn", "Elman RNN with tanh (vanishes over long sequences)")(nn.RNN)
CELLS.register("lstm", "long short-term memory (Hochreiter & Schmidhuber 1997)")(nn.LSTM)
CELLS.register("gru", "gated recurrent unit (Cho et al. 2014)")(nn.GRU)


class RowRNN(nn.Module):
    """(N, C, H, W) images -> H steps of C*W features -> recurrent layers of `hidden` widths -> Linear.

    Args:
        input_shape: (C, H, W).
        num_classes: output logits.
        hidden: width of each stacked recurrent layer.
        cell: CELLS name.
        dropout: drop probability before the head (and between stacked layers).
        dropout_kind: DROPOUTS name.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden: list[int],
        cell: str = "lstm",
        dropout: float = 0.0,
        dropout_kind: str = "dropout",
    ) -> None:
        super().__init__()
        c, _, w = input_shape
        make = CELLS.get(cell)
        widths = [c * w, *hidden]
        self.layers = nn.ModuleList(make(a, b, batch_first=True) for a, b in itertools.pairwise(widths))
        self.dropout = DROPOUTS.get(dropout_kind)(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        seq = x.permute(0, 2, 1, 3).flatten(2)  # (N, H, C*W): one row per step
        for i, layer in enumerate(self.layers):
            seq = layer(seq)[0]
            if i < len(self.layers) - 1:
                seq = self.dropout(seq)
        return self.out(self.dropout(seq[:, -1]))
