"""The fully connected nets of lecture 10: softmax regression (no hidden layer) up to deep, wide MLPs with
dropout and batch norm, as one module whose depth, width and layer pieces are plain arguments."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from dlzoo.models.blocks import ACTIVATIONS, NORMS


class MLP(nn.Module):
    """Flatten -> [Linear -> (norm) -> activation -> (norm) -> dropout] x len(hidden) -> Linear.

    Args:
        in_features: flattened input size (784 for MNIST).
        num_classes: output logits.
        hidden: width of each hidden layer; empty gives softmax regression.
        activation: ACTIVATIONS name.
        dropout: drop probability after each hidden activation.
        norm: NORMS name.
        norm_position: "before" (Ioffe & Szegedy's placement) or "after" the activation.
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
    ) -> None:
        super().__init__()
        make_act, make_norm = ACTIVATIONS.get(activation), NORMS.get(norm)
        blocks: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = in_features
        for i, out in enumerate(hidden, start=1):
            norm_layer = make_norm(out)
            # A norm right after the linear layer subtracts the mean, so a bias there would be dead weight.
            parts: OrderedDict[str, nn.Module] = OrderedDict(
                linear=nn.Linear(width, out, bias=norm_layer is None or norm_position == "after")
            )
            if norm_layer is not None and norm_position == "before":
                parts["norm"] = norm_layer
            parts["act"] = make_act()
            if norm_layer is not None and norm_position == "after":
                parts["norm"] = norm_layer
            if dropout > 0:
                parts["dropout"] = nn.Dropout(dropout)
            blocks[f"fc{i}"] = nn.Sequential(parts)
            width = out
        blocks["out"] = nn.Linear(width, num_classes)
        self.layers = nn.Sequential(blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
