"""The CLI documents itself: `dlzoo --version`, and `--help` on every verb leads with dlzoo's own short usage
(never Hydra's config dump), and trains nothing."""

from __future__ import annotations

import contextlib

import pytest

import dlzoo
from dlzoo import cli


def _run(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse's own --help exits 0 after printing
        return int(e.code or 0)


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--version", "-V"):
        assert cli.main([flag]) == 0
        assert capsys.readouterr().out.strip() == f"dlzoo {dlzoo.__version__}"


@pytest.mark.parametrize("verb", sorted(cli.VERBS))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_verb_answers_help_with_its_own_usage(
    verb: str, flag: str, capsys: pytest.CaptureFixture[str], tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may be written: a help request trains and makes no folder
    assert _run([verb, flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dlzoo {verb}"), out[:200]
    assert len(out.splitlines()) < 80 and "== Configuration groups ==" not in out, "a usage, not a config dump"
    assert not any(tmp_path.iterdir())  # type: ignore[attr-defined]


def test_train_help_points_to_the_config_instead_of_dumping_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--cfg job" in out and "dlzoo ls" in out and "== Configuration groups ==" not in out


def test_help_after_overrides_still_answers_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["eval", "ckpt=outputs/runs/first", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: dlzoo eval")


def test_the_top_level_usage_names_every_verb_and_the_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--version" in out and all(f"  {verb} " in out for verb in cli.VERBS)
    with contextlib.suppress(SystemExit):
        assert cli.main([]) == 0
