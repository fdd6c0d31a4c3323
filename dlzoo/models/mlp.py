"""The fully connected nets of lecture 10: softmax regression (no hidden layer) up to deep, wide MLPs with
dropout and batch norm, as one module whose depth, width and layer pieces are plain arguments."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from dlzoo.models.activations import ACTIVATIONS, ActArgs
from dlzoo.models.heads import HEADS
from dlzoo.models.norm_dropout import DROPOUTS, NORMS


class MLP(nn.Module):
    """Flatten -> [Linear -> (norm) -> activation -> (norm) -> dropout] x len(hidden) -> Linear.

    Args:
        in_features: flattened input size (784 for MNIST).
        num_classes: output logits.
        hidden: width of each hidden layer; empty gives softmax regression.
        activation: ACTIVATIONS name; maxout widens the linear layer before it k-fold.
        dropout: drop probability after each hidden activation.
        norm: NORMS name.
        norm_position: "before" (Ioffe & Szegedy's placement) or "after" the activation.
        dropout_kind: DROPOUTS name (alpha_dropout for SELU nets).
        act_args: the activation's parameters.
        head: HEADS name for the output layer (sigmoid: one unit for 2 classes).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
        norm_position: str = "before",
        dropout_kind: str = "dropout",
        act_args: ActArgs | None = None,
        head: str = "softmax",
    ) -> None:
        super().__init__()
        act_args = act_args or ActArgs()
        act, make_norm, make_dropout = ACTIVATIONS.get(activation), NORMS.get(norm), DROPOUTS.get(dropout_kind)
        pieces = act.pieces(act_args)
        blocks: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = in_features
        for i, out in enumerate(hidden, start=1):
            pre_width = out * pieces  # maxout takes the max over `pieces` linear outputs per unit
            norm_layer = make_norm(pre_width if norm_position == "before" else out)
            # A norm right after the linear layer subtracts the mean, so a bias there would be dead weight.
            parts: OrderedDict[str, nn.Module] = OrderedDict(
                linear=nn.Linear(width, pre_width, bias=norm_layer is None or norm_position == "after")
            )
            if norm_layer is not None and norm_position == "before":
                parts["norm"] = norm_layer
            parts["act"] = act.build(out, act_args)
            if norm_layer is not None and norm_position == "after":
                parts["norm"] = norm_layer
            if dropout > 0:
                parts["dropout"] = make_dropout(dropout)
            blocks[f"fc{i}"] = nn.Sequential(parts)
            width = out
        blocks["out"] = HEADS.get(head)(width, num_classes)
        self.layers = nn.Sequential(blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
