"""The terminal tables: on an 80-column terminal a compact table keeps every number whole and folds a long name
in a wrapped column onto the next line, never cutting it off."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import dlzoo.console


def test_a_compact_table_at_80_columns_cuts_nothing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Console(width=80, record=True, markup=False, file=io.StringIO())
    monkeypatch.setattr(dlzoo.console, "console", screen)
    header = ["group", "n", "test_acc", "95% CI", "Δ (points)\n[95% CI]", "p", "beyond\nnoise"]
    rows = [["xavier_uniform_with_a_long_name", "5 (+2 not counted)", "0.9812", "0.9790–0.9834",
             "+3.21 [2.90, 3.52]", "< 0.001", "no finished run"]]  # fmt: skip
    dlzoo.console.print_table("compare", header, rows, right=range(1, 7), compact=True, wrap=[0, 1, 4, 6])
    text = screen.export_text()
    assert "…" not in text, text
    assert all(len(line) <= 80 for line in text.splitlines())
    for number in ("0.9812", "0.9790–0.9834", "< 0.001"):  # numbers are never wrapped
        assert number in text, text
    lines = text.splitlines()
    body = lines[next(i for i, line in enumerate(lines) if "─" in line) + 1 :]
    first = [line.split()[0] for line in body if line.strip()]  # the group column, line by line
    assert "".join(first).startswith("xavier_uniform_with_a_long_name"), text  # folded, whole


def test_a_boxed_table_at_80_columns_folds_the_swept_value_instead_of_cutting_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = Console(width=80, record=True, markup=False, file=io.StringIO())
    monkeypatch.setattr(dlzoo.console, "console", screen)
    header = ["model.init", "n", "seeds", "val_acc", "test_acc", "test_loss", "s / run", "failed"]
    rows = [["xavier_uniform", "2", "1, 2", "0.3590 ± 0.0948", "0.3145 ± 0.0728", "1.9352 ± 0.0649", "0", ""]]
    dlzoo.console.print_table("report", header, rows, right=range(1, 8))
    text = screen.export_text()
    assert "…" not in text, text
    cells = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]
    assert "".join(cells) == "xavier_uniform", text


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Training diverged: the loss exploded to 13.32 at step 5. Fix: lower optim.lr (e.g. by 10x).",
         "Training diverged: the loss exploded to 13.32 at step 5"),
        ("damaged metrics.json: Expecting value: line 1 column 1 (char 0)",
         "damaged metrics.json: Expecting value: line 1 column 1 (char 0)"),
        ("Use a lower rate, e.g. by 10x. Then resume.", "Use a lower rate, e.g. by 10x"),
        ("test_acc is nan.", "test_acc is nan"),
    ],
)  # fmt: skip
def test_first_sentence_is_what_happened_without_the_fix(message: str, expected: str) -> None:
    assert dlzoo.console.first_sentence(message) == expected
