"""The pictures a run's dashboard shows beside its curves, drawn with matplotlib into RGB arrays for TensorBoard's
Images tab: per-layer statistics against depth (lecture 10's vanishing gradients and init lessons), the test
set's confusion matrix, and its most confidently misclassified images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

# (step, {layer: value}) snapshots of one per-layer statistic, oldest first.
Snapshots = list[tuple[int, dict[str, float]]]


def _canvas(width: float, height: float):
    # A figure on its own Agg canvas, not pyplot's: matplotlib.use("Agg") would switch the whole process, and a
    # notebook's own plots (the inline backend) would stop showing after a run drew its dashboards.
    # matplotlib is a slow import: it loads when a run draws its first figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _pixels(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def pick(snapshots: Snapshots, most: int = 6) -> Snapshots:
    """At most `most` snapshots spread over training, the first and the last always among them."""
    if len(snapshots) <= most:
        return snapshots
    idx = np.unique(np.linspace(0, len(snapshots) - 1, most).round().astype(int))
    return [snapshots[i] for i in idx]


def depth_figure(snapshots: Snapshots, what: str, title: str, log: bool = True) -> np.ndarray:
    """One per-layer statistic (a gradient norm, an activation std, a mean slope) against layer depth, one line
    per recorded step (dark = early, light = late), on a log scale unless `log` is false (then on [0, 1]): a
    gradient that shrinks layer by layer towards the input is a line that falls to the left. Wide and short,
    because TensorBoard fits an image to its card's height."""
    # matplotlib is a slow import: it loads when a run draws its first figure
    import matplotlib.cm

    snaps = pick(snapshots)
    fig = _canvas(8.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    layers = list(snaps[-1][1])
    colors = matplotlib.cm.viridis(np.linspace(0.0, 0.9, len(snaps)))
    for color, (step, values) in zip(colors, snaps, strict=True):
        ys = [values.get(layer, np.nan) for layer in layers]
        ax.plot(range(1, len(layers) + 1), np.maximum(ys, 1e-12), marker="o", color=color, label=f"step {step}")
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, 1.05)
    ax.set_xticks(range(1, len(layers) + 1))
    ax.set_xlabel("layer depth (1 = next to the input)")
    ax.set_ylabel(what)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.15)  # tight_layout costs more than the drawing
    return _pixels(fig)


def confusion(predicted: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """counts[i, j]: test images of class i predicted as j."""
    index = labels.long().cpu() * num_classes + predicted.long().cpu()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def confusion_figure(counts: Tensor, classes: Sequence[str], title: str) -> np.ndarray:
    """The confusion matrix as row shares (each true class sums to 1), with the counts written in the cells."""
    n = len(classes)
    shares = counts.double() / counts.sum(1, keepdim=True).clamp_min(1)
    fig = _canvas(1.6 + 0.55 * n, 1.2 + 0.5 * n)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                color = "white" if float(shares[i, j]) > 0.5 else "black"
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.subplots_adjust(left=0.18, right=0.97, top=0.92, bottom=0.18)
    return _pixels(fig)


def misclassified_figure(
    images: Tensor, labels: Tensor, probs: Tensor, classes: Sequence[str], title: str, count: int = 24
) -> np.ndarray | None:
    """The `count` wrong predictions made with the highest confidence, each captioned true -> predicted (p), or
    None when the inputs are not images or nothing is wrong."""
    if images.dim() != 4 or images.shape[-1] < 4:
        return None
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    if len(wrong) == 0:
        return None
    worst = wrong[confidence[wrong].argsort(descending=True)[:count]].tolist()
    # One mosaic in one axes, each image under a white band for its caption: a subplot per image would cost a
    # second per figure.
    cols, (c, h, w) = 8, images.shape[1:]
    rows, band = -(-len(worst) // cols), max(h // 2, 8)
    cell_h, cell_w = h + band, w + 2
    mosaic = torch.full((rows * cell_h, cols * cell_w, c), 255.0)
    for k, i in enumerate(worst):
        r, q = divmod(k, cols)
        top, left = r * cell_h + band, q * cell_w + 1
        mosaic[top : top + h, left : left + w] = images[i].float().cpu().permute(1, 2, 0)
    fig = _canvas(1.4 * cols, 1.9 * rows + 0.4)
    ax = fig.add_axes((0, 0, 1, 1 - 0.4 / (1.9 * rows + 0.4)))
    ax.imshow((mosaic[..., 0] if c == 1 else mosaic / 255).numpy(), cmap="gray" if c == 1 else None,
              extent=(0, cols, rows, 0), aspect="auto", vmin=0, vmax=255 if c == 1 else None)  # fmt: skip
    for k, i in enumerate(worst):
        r, q = divmod(k, cols)
        t, p = classes[int(labels[i])], classes[int(predicted[i])]
        ax.text(q + 0.5, r + 0.5 * band / cell_h, f"{t} -> {p} ({float(confidence[i]):.2f})", ha="center",
                va="center", fontsize=7)  # fmt: skip
    ax.axis("off")
    fig.suptitle(title, fontsize=10, y=0.995, va="top")
    return _pixels(fig)
