"""The commands of README.md and docs/, as a user would paste them: every fenced `bash` block, continued lines
joined, comments dropped, `&&` chains split, and the block's own shell variables (`S="..."`) expanded. Shared by
the README and docs tests; a `text` block is a sketch and is never read here."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", flags=re.S | re.M)
ASSIGN = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@dataclass(frozen=True)
class Command:
    """One command of a page: where it is and its words after the shell's own parsing."""

    page: str
    line: int
    words: tuple[str, ...]

    @property
    def text(self) -> str:
        return shlex.join(self.words)

    def where(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def pages() -> list[Path]:
    """README.md and every Markdown page of the docs site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def blocks(text: str, lang: str) -> list[tuple[int, str]]:
    """(first line number of the body, body) of each fenced block in language `lang`."""
    return [(text[: m.start(2)].count("\n") + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == lang]


def logical_lines(body: str, first: int) -> list[tuple[int, str]]:
    """Lines with their `\\` continuations joined, each with the number of the line it starts on."""
    out: list[tuple[int, str]] = []
    pending, start = "", first
    for i, raw in enumerate(body.splitlines()):
        if not pending:
            start = first + i
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        out.append((start, pending + raw))
        pending = ""
    return out


def commands(page: Path, env: dict[str, str] | None = None) -> list[Command]:
    """Every command of the page's bash blocks; `env` gives values for variables a block reads but never sets."""
    rel = page.relative_to(ROOT).as_posix()
    out: list[Command] = []
    for first, body in blocks(page.read_text(), "bash"):
        variables = dict(env or {})
        for number, line in logical_lines(body, first):
            words = _split(_expand(line, variables))
            for part in _chain(words):
                assigned = ASSIGN.match(" ".join(part)) if len(part) <= 2 else None
                if assigned and (len(part) == 1 or part[0] == "export"):
                    variables[assigned.group(1)] = part[-1].split("=", 1)[1]
                out.append(Command(rel, number, tuple(part)))
    return out


def _expand(line: str, variables: dict[str, str]) -> str:
    """Replace `$NAME`/`${NAME}` outside single quotes by the variable's value, as the shell would."""
    pieces = re.split(r"('[^']*')", line)
    for i, piece in enumerate(pieces):
        if not piece.startswith("'"):
            pieces[i] = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                               lambda m: variables.get(m.group(1), m.group(0)), piece)  # fmt: skip
    return "".join(pieces)


def _split(line: str) -> list[str]:
    return shlex.split(line, comments=True)


def _chain(words: list[str]) -> list[list[str]]:
    """`a && b` as [a, b]; an empty line as nothing."""
    parts: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            parts.append([])
        else:
            parts[-1].append(word)
    return [p for p in parts if p]


def files_written(page: Path) -> dict[str, str]:
    """The `yaml` blocks that name their own file on their first line (`# my_conf/model/res_branch.yaml`)."""
    out = {}
    for _, body in blocks(page.read_text(), "yaml"):
        head = body.splitlines()[0] if body.strip() else ""
        match = re.fullmatch(r"#\s*(\S+\.yaml)\s*", head)
        if match and not match.group(1).startswith(("conf/", "/")):
            out[match.group(1)] = body
    return out
