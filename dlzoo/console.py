"""The terminal: one rich console for everything dlzoo prints (errors, warnings, lines, tables), and the run's
file log beside it. The base layer: any package may import it."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dlzoo.errors import DlzooError
from dlzoo.paths import link_message, refuse_links

log = logging.getLogger("dlzoo")
# markup=False: what dlzoo prints quotes paths, overrides and error text, whose brackets rich would read as tags.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def first_sentence(message: str) -> str:
    """What happened, without the fix that follows it: the text up to the first period that ends a sentence
    (one followed by a capital letter, so "e.g. by" stays), without that period."""
    return re.split(r"(?<=[\w)\]'\"])\.\s+(?=[A-Z`])", message.strip(), maxsplit=1)[0].rstrip(".")


def print_error(message: str, to_log: bool = True) -> None:
    """A user-facing error: one paragraph on stderr, no traceback; inside a run also in its train.log, where
    `dlzoo report` finds why a job failed (`to_log=False`: a sweep's own end, whose log handler is the terminal)."""
    # Text, not markup: a message quotes user input, whose brackets ([tune], [abc], [/x]) rich would eat or choke on.
    err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    # Hydra sets a handler up inside a run; outside one, logging's fallback would print the message twice.
    if to_log and log.hasHandlers():
        log.error(message)


def print_warning(message: str) -> None:
    err_console.print(Text.assemble(("warning: ", "bold yellow"), message), highlight=False, soft_wrap=True)
    log.warning(message)


def say(line: str) -> None:
    """A line for the terminal and the run's train.log alike."""
    console.print(line, highlight=False, soft_wrap=True)
    log.info(line)


def redirect_file_logs(path: Path) -> None:
    """Send the run's file log (Hydra's train.log handler) to `path`, appending: a resumed run keeps one log in
    the folder it continues, not a second one in the folder Hydra made for this invocation. Only a handler on a
    file of that name moves: a notebook user's own log file (or pytest's) stays where its owner put it."""
    refuse_links(path.parent)  # the run continues there: a planted link is refused before a line is logged
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler) or Path(handler.baseFilename).name != path.name:
            continue
        if Path(handler.baseFilename) != path.absolute():
            handler.close()
            handler.baseFilename, handler.mode = str(path.absolute()), "a"
            handler.stream = handler._open()


def refuse_linked_logs() -> None:
    """Hydra opened the run's train.log before dlzoo's code runs: if that name is a planted link, the handler is
    closed before a line goes through it, and the run is refused."""
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_symlink():
            handler.close()
            logging.getLogger().removeHandler(handler)
            raise DlzooError(link_message(Path(handler.baseFilename)))


# Facts about where a run ran, not results: printed on one line under the results table.
ENVIRONMENT = ("seed", "device", "device_name", "threads", "python", "torch", "torchvision", "dlzoo", "git_commit",
               "world_size")  # fmt: skip


def format_value(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if key.endswith("_per_s"):
        return f"{value:,.0f}"
    if key.endswith("_s"):
        return f"{value:,.1f} s"
    return f"{value:.4f}" if isinstance(value, float) else f"{value:,}"


def print_final(
    metrics: dict[str, Any], out: Path, what: str = "metrics.json, checkpoints/, TensorBoard events"
) -> None:
    """The results as a table (environment facts on one line under it), then where they were written (`what`
    says what `out` holds)."""
    table = Table(title="final metrics", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        # A dict's details are said apart (a warning); None is a score that does not apply (an ensemble's vote has no
        # test loss), which metrics.json keeps and the table leaves out.
        if key not in ENVIRONMENT and not isinstance(value, dict) and value is not None:
            table.add_row(key, format_value(key, value))
    console.print(table)
    shown = {k: metrics[k] for k in ENVIRONMENT if metrics.get(k) not in (None, "")}
    if shown.get("device_name") == shown.get("device"):
        shown.pop("device_name", None)
    if isinstance(shown.get("git_commit"), str):
        shown["git_commit"] = shown["git_commit"][:12] + ("-dirty" if shown["git_commit"].endswith("dirty") else "")
    facts = [f"{k} {v}" for k, v in shown.items()]
    if facts:
        console.print("  ·  ".join(facts), style="dim", highlight=False)
    log.info("final metrics: %s", metrics)
    console.print(f"outputs: {out}  ({what})")
    if out.is_dir():
        console.print(f"dashboards: tensorboard --logdir {out.parent}")


def _wrapped_lines(text: str, width: int) -> int:
    """How many lines `text` takes in a column `width` wide, wrapped at spaces (a longer word folded)."""
    count = 0
    for line in text.splitlines() or [""]:
        count += not line.split()  # an empty line still takes one
        used = 0
        for w in line.split():
            if used and used + 1 + len(w) <= width:
                used += 1 + len(w)
            else:
                count, used = count + 1 + (len(w) - 1) // max(width, 1), len(w)
    return count


def fitted_widths(
    header: list[str], rows: list[list[str]], wrapped: set[int], room: int, first: set[int] = frozenset()
) -> list[int | None]:
    """Widths for a table whose lines are longer than `room` (rich itself shrinks the widest columns to equal widths,
    folding names and numbers mid-word while short columns keep spare room). Each column in `wrapped` gets its
    longest word; the room left goes, a few characters at a time, to the widening that takes the most lines off the
    table per character (on a tie, a column in `first`: numbers), so lines break at spaces and the table is as
    short as the room allows. Only where even the words cannot fit are the longest ones folded. None for every
    column when the table fits as it is, and for the columns not in `wrapped`."""
    cells = [[header[i], *(row[i] for row in rows)] for i in range(len(header))]
    longest = [max((len(line) for c in col for line in c.splitlines()), default=0) for col in cells]
    if sum(longest) <= room:
        return [None] * len(header)
    word = [max((len(w) for c in col for w in c.split()), default=0) if i in wrapped else longest[i]
            for i, col in enumerate(cells)]  # fmt: skip
    # Too narrow even for whole words: a header's word folds first (down to its values' longest), then the longest.
    value_word = [max((len(w) for c in col[1:] for w in c.split()), default=1) for col in cells]
    for floor in (value_word, [1] * len(word)):
        while sum(word) > room:
            loose = [i for i in wrapped if word[i] > floor[i]]
            if not loose:
                break
            top = max(word[i] for i in loose)
            word = [w - 1 if i in loose and w == top else w for i, w in enumerate(word)]
    # A header may wrap onto more lines before a value does: only the values' lines count.
    values = [max((len(line) for c in col[1:] for line in c.splitlines()), default=0) for col in cells]
    spare = room - sum(word)
    # Then, a few characters at a time, the widening that takes the most lines off the table per character.
    grow = sorted(i for i in wrapped if values[i] > word[i])
    tall = {i: {w: [_wrapped_lines(row[i], w) for row in rows] for w in range(word[i], values[i] + 1)} for i in grow}

    def lines(widths: list[int]) -> tuple[int, int]:
        """The table's height, then every cell's lines: a row shortens only when all its tall cells do, so a
        widening that shortens one cell on the way counts too."""
        per_row = [[tall[i][min(widths[i], values[i])][r] for i in grow] for r in range(len(rows))]
        return sum(max(cells, default=1) for cells in per_row), sum(sum(cells) for cells in per_row)

    now = lines(word)
    kept = list(word)  # the widths at the last height saved: room spent past it only evens out cells
    while spare > 0:
        options = []
        for i in grow:
            for d in range(1, min(spare, values[i] - word[i]) + 1):
                after = lines([*word[:i], word[i] + d, *word[i + 1 :]])
                options.append(((now[0] - after[0]) / d, (now[1] - after[1]) / d, i in first, -d, i, after))
        best = max(options, default=None)  # most lines off per character; on a tie a number column, then narrower
        if best is None or best[:2] <= (0, 0):
            break
        *_, narrower, i, after = best
        word[i], spare = word[i] - narrower, spare + narrower
        if after[0] < now[0]:
            kept = list(word)
        now = after
    # Room that shortened no row stays unspent, so columns of alike values wrap alike (a mean ± std each).
    return [w if i in wrapped else None for i, w in enumerate(kept)]


def print_table(
    title: str,
    header: list[str],
    rows: list[list[str]],
    caption: str | None = None,
    right: Iterable[int] = (),
    compact: bool = False,
    wrap: Iterable[int] = (),
) -> None:
    """A table of plain strings (never read as rich markup: values and error lines may hold brackets); the
    columns at indices `right` are right-aligned (numbers). `compact` draws only the header's rule and wraps
    only the columns at indices `wrap` (long words folded), so a wide table fits 80 columns with numbers whole."""
    right, wrap = set(right), set(wrap)
    table = Table(title=Text(title), title_justify="left", caption=caption and Text(caption), caption_justify="left",
                  box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD, pad_edge=not compact)  # fmt: skip
    wrapped = {i for i in range(len(header)) if not compact or i in wrap}
    # Each column's border and padding: rich's edges, one rule between columns, one space each side of a cell.
    frame = 2 + (len(header) - 1) + 2 * len(header) - (2 if compact else 0)
    widths = fitted_widths(header, rows, wrapped, console.width - frame, right)
    for i, name in enumerate(header):
        # A wrapped column folds a word longer than its width onto the next line rather than cutting it off.
        no_wrap = i not in wrapped
        table.add_column(Text(name), justify="right" if i in right else "left", no_wrap=no_wrap,
                         overflow="ellipsis" if no_wrap else "fold", width=widths[i])  # fmt: skip
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)
