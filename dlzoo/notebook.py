"""The live display of a `dlzoo.train` call inside Jupyter: a progress line and a loss/accuracy figure (train and
val overlaid) redrawn in place every epoch, then the final metrics as a rendered table. Terminal runs use the rich
display of dlzoo.engine.recording.tracking instead."""

from __future__ import annotations

import html
import io
import math
import time
from collections.abc import Callable
from typing import Any

from dlzoo.console import ENVIRONMENT, console, format_value

# The bar is redrawn at most every BAR_S, the figure at most every FIGURE_S and never more often than its own
# drawing time × FIGURE_COST: XOR's 1,000 one-step epochs would otherwise spend the run drawing PNGs.
BAR_S, FIGURE_S, FIGURE_COST = 0.2, 1.0, 5


def in_jupyter() -> bool:
    """Whether this process is a Jupyter kernel (rich's own test, which dlzoo's console already made)."""
    return console.is_jupyter


def metrics_html(metrics: dict[str, Any], folder: object, per_row: int = 4) -> str:
    """The CLI's final table as HTML, `per_row` metric/value pairs a row (a notebook of many runs stays short),
    the environment facts on a line under it."""
    cells = [
        f"<td style='text-align:left'>{html.escape(k)}</td><td style='text-align:right;padding-right:1.5em'><b>"
        f"{html.escape(format_value(k, v))}</b></td>"
        for k, v in metrics.items()
        if k not in ENVIRONMENT
    ]
    rows = "".join("<tr>" + "".join(cells[i : i + per_row]) + "</tr>" for i in range(0, len(cells), per_row))
    facts = {k: v for k in ENVIRONMENT if (v := metrics.get(k)) not in (None, "")}
    if facts.get("device_name") == facts.get("device"):
        facts.pop("device_name", None)
    line = "  ·  ".join(f"{k} {v}" for k, v in facts.items())
    return (
        f"<table><tbody>{rows}</tbody></table><div style='color:gray'>{html.escape(line)}</div>"
        f"<div>outputs: <code>{html.escape(str(folder))}</code></div>"
    )


class NotebookView:
    """One run's display: three outputs made once and then updated in place (IPython display handles).

    Args:
        epochs: planned epochs, for the progress line.
        title: what is training (the overrides), shown above the bar.
        show: IPython.display.display (a test passes a recorder); it must accept display_id=True and return
            a handle with .update(obj).
    """

    def __init__(self, epochs: int, title: str, show: Callable[..., Any] | None = None) -> None:
        # IPython is there only in a notebook (the optional `notebook` extra)
        from IPython.display import HTML, display

        show = show or display
        self.epochs, self.title = epochs, title
        self.series: list[list[dict[str, float]]] = []  # one per model trained (an ensemble's members)
        self.started = time.perf_counter()
        self.bar_at, self.figure_at, self.figure_s = -math.inf, -math.inf, 0.0
        self._html = HTML
        self.bar = show(HTML(self._bar(0, None)), display_id=True)
        self.plot = show(HTML(""), display_id=True)
        self.table = show(HTML(""), display_id=True)

    def epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """The loop's on_epoch_end: record the epoch, redraw what was not drawn a moment ago (a model's last
        epoch always is)."""
        if not self.series or epoch <= self.series[-1][-1]["epoch"]:
            self.series.append([])  # the next member of an ensemble starts again at epoch 1
        self.series[-1].append({"epoch": epoch, **metrics})
        now, last = time.perf_counter(), epoch == self.epochs
        if last or now - self.bar_at >= BAR_S:
            self.bar_at = now
            self.bar.update(self._html(self._bar(epoch, metrics)))
        if last or now - self.figure_at >= max(FIGURE_S, FIGURE_COST * self.figure_s):
            self.plot.update(self._figure())
            self.figure_at = time.perf_counter()
            self.figure_s = self.figure_at - now

    def finish(self, metrics: dict[str, Any], folder: object) -> None:
        """The final state: the last epoch drawn (a throttled one may not have been) and the results table."""
        if self.series:
            last = self.series[-1][-1]
            self.bar.update(self._html(self._bar(int(last["epoch"]), last, done=True)))
            self.plot.update(self._figure())
        self.table.update(self._html(metrics_html(metrics, folder)))

    def stopped(self, message: str) -> None:
        """An interrupted or failed run: the bar says so (the exception itself says how to resume)."""
        last = self.series[-1][-1] if self.series else None
        self.bar.update(self._html(self._bar(int(last["epoch"]) if last else 0, last, note=message)))

    def _bar(self, epoch: int, metrics: dict[str, float] | None, done: bool = False, note: str = "") -> str:
        elapsed = time.perf_counter() - self.started
        eta = elapsed / epoch * (self.epochs - epoch) if epoch and not done else 0.0
        scores = (
            f"train loss {metrics['train/loss']:.4f} acc {metrics['train/acc']:.4f} · val loss "
            f"{metrics['val/loss']:.4f} acc {metrics['val/acc']:.4f}"
            if metrics
            else "starting"
        )
        status = note or ("done" if done else f"eta {eta:.0f} s")
        return (
            f"<div><b>{html.escape(self.title)}</b></div>"
            f"<progress value='{epoch}' max='{max(self.epochs, 1)}' style='width:40%'></progress> "
            f"epoch {epoch}/{self.epochs} · {html.escape(scores)} · {elapsed:.0f} s · {html.escape(status)}"
        )

    def _figure(self) -> Any:
        """Loss and accuracy per epoch, train solid and val dashed, as a PNG (no pyplot: nothing is left open)."""
        # IPython: the optional `notebook` extra; matplotlib, a slow import, only when a figure is drawn
        from IPython.display import Image
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        fig = Figure(figsize=(9, 3.2))
        axes = fig.subplots(1, 2, gridspec_kw={"wspace": 0.25, "left": 0.07, "right": 0.98, "bottom": 0.15})
        for i, series in enumerate(self.series):
            member = f" (model {i + 1})" if len(self.series) > 1 else ""
            epochs = [h["epoch"] for h in series]
            for ax, what in zip(axes, ("loss", "acc"), strict=True):
                for split, style in (("train", "-"), ("val", "--")):
                    ax.plot(epochs, [h[f"{split}/{what}"] for h in series], style, color=f"C{i}",
                            marker="o" if len(epochs) < 30 else None, label=f"{split}{member}")  # fmt: skip
        for ax, what in zip(axes, ("loss", "accuracy"), strict=True):
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        return Image(data=buffer.getvalue(), format="png")
