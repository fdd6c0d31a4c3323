"""The terminal tables: on an 80-column terminal a compact table keeps every number whole and folds a long name
in a wrapped column onto the next line, never cutting it off."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import dlzoo.console
from dlzoo.sweeps.ladder import shown_columns
from dlzoo.sweeps.ladder_table import HEADER


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


LADDER_HEADER = ["rung", "lecture (MNIST)", "ours: test acc", "n", "Δ vs rung above (95% CI)", "beyond noise?",
                 "epochs", "s / run"]  # fmt: skip
LADDER_ROWS = [
    ["10-1 softmax (lab10_1_softmax)", "~90%", "0.9187 ± 0.0012", "5", "", "", "15", "12.3 s"],
    ["10-3 Xavier init (lab10_3_xavier)", "97.8%", "0.9791 ± 0.0011", "5", "+0.0604 (0.0590–0.0618)",
     "yes (p < 0.001)", "15", "40.1 s"],
    ["11-5 ensemble of 7 (lab11_5_ensemble)", "99.4%+", "0.9941 ± 0.0004", "5", "+0.0021 (0.0012–0.0030)",
     "yes (p = 0.025)", "15", "1,234.5 s"],
]  # fmt: skip


@pytest.mark.parametrize("width", [90, 100, 110, 120])
def test_a_boxed_table_too_wide_for_the_terminal_breaks_lines_at_spaces(
    width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rich alone shrinks the widest columns to equal widths: at 100 columns the ladder's table read
    `(lab10_1_sof` / `tmax)`, and `(0.0590–0.0` / `618)`, while the lecture column kept room to spare. At 90 the
    values' words still fit whole (a header's word folds first)."""
    screen = Console(width=width, record=True, markup=False, file=io.StringIO())
    monkeypatch.setattr(dlzoo.console, "console", screen)
    dlzoo.console.print_table("ladder", LADDER_HEADER, LADDER_ROWS, right=range(1, 8))
    text = screen.export_text()
    assert all(len(line) <= width for line in text.splitlines()), text
    cells = {line.strip() for row in text.splitlines() for line in row.split("│")}
    for word in {w for row in LADDER_ROWS for cell in row for w in cell.split()}:
        assert any(word in cell.split() for cell in cells), (word, text)  # never folded mid-word
    if width >= 100:  # room to spare: no row takes more than two lines (rich's own widths took three)
        body = text.split("┡")[1].split("└")[0].splitlines()[1:]
        assert len(body) <= 2 * len(LADDER_ROWS), text


def test_fitted_widths_leave_a_table_that_fits_to_rich() -> None:
    assert dlzoo.console.fitted_widths(["a", "b"], [["1", "2"]], {0, 1}, 80) == [None, None]


@pytest.mark.parametrize("width", [80, 90, 100, 120])
def test_the_ladder_table_keeps_every_word_whole_down_to_80_columns(
    width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ladder shows fewer columns on a narrower terminal (dlzoo.sweeps.ladder.shown_columns; ladder.md keeps
    them all), so that down to 80 columns no name, number or header is folded mid-word."""
    full = ["rung", "what changed", *LADDER_HEADER[1:]]
    rows = [[r[0], "the lecture's next step", *r[1:]] for r in LADDER_ROWS]
    assert full == HEADER
    keep = shown_columns(width)
    screen = Console(width=width, record=True, markup=False, file=io.StringIO())
    monkeypatch.setattr(dlzoo.console, "console", screen)
    dlzoo.console.print_table("ladder", [full[i] for i in keep], [[r[i] for i in keep] for r in rows],
                              right=range(keep.index(2), len(keep)))  # fmt: skip
    text = screen.export_text()
    assert all(len(line) <= width for line in text.splitlines()), text
    cells = {line.strip() for row in text.splitlines() for line in row.replace("┃", "│").split("│")}
    words = {w for i in keep for text_ in [full[i], *(r[i] for r in rows)] for w in text_.split()}
    for word in words:
        assert any(word in cell.split() for cell in cells), (word, text)
    assert ("epochs" in text) == (width >= 100) and ("what changed" in text.replace("\n", " ")) == (width >= 120)


def test_room_that_shortens_no_row_stays_unspent(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dlzoo report` at 80 columns: every row wraps its val_acc and test_acc means onto two lines, so widening
    test_loss to one line shortens nothing; it wraps like the other means instead of standing out."""
    screen = Console(width=80, record=True, markup=False, file=io.StringIO())
    monkeypatch.setattr(dlzoo.console, "console", screen)
    header = ["experiment", "n", "seeds", "val_acc", "test_acc", "test_loss", "s / run"]
    rows = [
        ["lab10_3_xavier", "3", "1, 2, 3", "0.8308 ± 0.0016", "0.7977 ± 0.0026", "0.6881 ± 0.0139", "1"],
        ["lab10_5_dropout", "3", "1, 2, 3", "0.6766 ± 0.0075", "0.6278 ± 0.0120", "1.0945 ± 0.0728", "4"],
        ["lab10_1_softmax", "3", "1, 2, 3", "0.1135 ± 0.0181", "0.1022 ± 0.0012", "11.4280 ± 0.3290", "1"],
    ]
    dlzoo.console.print_table("report", header, rows, right=range(1, 7))
    text = screen.export_text()
    assert "0.8308 ± 0.0016" not in text and "0.6881 ± 0.0139" not in text, text  # both wrapped, alike
    body = text.split("┡")[1].split("└")[0].splitlines()[1:]
    assert len(body) == 2 * len(rows), text
