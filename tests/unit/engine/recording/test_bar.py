"""The live bar fits the terminal: on any width from 80 columns up, nothing in it is cut short (the eta above
all), for a lab-sized run and for a long one with big numbers."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.progress import Progress

from dlzoo.engine.recording.tracking import bar_columns


@pytest.mark.parametrize("width", [80, 90, 99, 100, 105, 114, 115, 120, 160])
@pytest.mark.parametrize(
    ("total", "done", "epochs", "loss", "speed"),
    [(8250, 3415, 15, "0.0663", 11215.0), (82500, 34150, 150, "12.3456", 123456.0)],
)
def test_nothing_in_the_bar_is_cut_short(
    width: int, total: int, done: int, epochs: int, loss: str, speed: float
) -> None:
    screen = Console(width=width, file=io.StringIO(), force_terminal=True, color_system=None)
    progress = Progress(*bar_columns(width), console=screen, auto_refresh=False)
    task = progress.add_task("train", total=total, epoch=7, epochs=epochs, loss=loss, speed=speed)
    progress.update(task, completed=done)
    screen.print(progress.make_tasks_table(progress.tasks))
    line = screen.file.getvalue().rstrip("\n")  # type: ignore[attr-defined]
    assert "…" not in line and len(line) <= width, line
    assert f"{done:,}/{total:,}" in line and f"running mean loss {loss}" in line and "run eta" in line
    assert (f"{speed:,.0f} samples/s" in line) == (width >= 100)
