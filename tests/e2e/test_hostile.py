"""Hostile files and folders, as a tester would try them: a loose checkpoint resumed from a folder that is not a
run, links planted where dlzoo writes, non-finite values at a histogram step, a sweep's launcher missing. Each case
checks that nothing is written outside the run folder and that the user gets one paragraph, never a traceback."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlzoo.cli import compose_and_validate
from dlzoo.engine.assembly.run import run
from tests.helpers import dlzoo

TINY = ["debug=fast", "trainer.threads=1", "model=mlp", "model.hidden=[16]", "trainer.figures=false"]


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` (links not followed) with a file's bytes: what a stray write would change."""
    out: dict[str, bytes | None] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        out[key] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return out


@pytest.fixture
def tiny_run(toy_root: Path, tmp_path: Path) -> Path:
    """A finished one-epoch run of TINY on the toy data, made in-process (seconds)."""
    folder = tmp_path / "made"
    run(compose_and_validate([*TINY, f"data.root={toy_root}"]), folder)
    return folder


def test_a_loose_checkpoint_is_read_alone_and_the_run_goes_only_into_its_new_folder(
    tiny_run: Path, toy_root: Path, tmp_path: Path
) -> None:
    downloads, work = tmp_path / "downloads", tmp_path / "work"
    (downloads / "photos").mkdir(parents=True)
    (downloads / "photos" / "cat.txt").write_text("mine")
    (downloads / "notes.txt").write_text("mine too")
    shutil.copy(tiny_run / "checkpoints" / "last.pt", downloads / "last.pt")
    work.mkdir()
    before = listing(downloads)
    args = ["train", *TINY, f"data.root={toy_root}", f"trainer.resume={downloads / 'last.pt'}"]

    # Hydra's own folder: nothing of the run lands beside the file (metrics.json, train.log, events, checkpoints).
    plain = dlzoo(*args, cwd=work)
    assert plain.returncode == 0, plain.stderr
    assert listing(downloads) == before and "loose checkpoint" in plain.stdout
    assert len(list(work.glob("outputs/runs/*/metrics.json"))) == 1

    # A chosen folder: the run goes there, and the file's folder is not copied into it.
    new = downloads / "new"
    chosen = dlzoo(*args, f"hydra.run.dir={new}", cwd=work)
    assert chosen.returncode == 0, chosen.stderr
    assert {k: v for k, v in listing(downloads).items() if not k.startswith("new")} == before
    assert (new / "metrics.json").is_file() and not (new / "photos").exists() and not (new / "notes.txt").exists()

    # Another model: refused before anything is written anywhere.
    wrong = dlzoo(*[a.replace("hidden=[16]", "hidden=[8]") for a in args], f"hydra.run.dir={tmp_path / 'w'}", cwd=work)
    assert wrong.returncode == 2 and "does not match" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not (tmp_path / "w").exists()


def test_continuing_a_run_inside_itself_is_refused(tiny_run: Path, toy_root: Path, tmp_path: Path) -> None:
    before = listing(tiny_run)
    inside = tiny_run / "again"
    proc = dlzoo("train", *TINY, f"data.root={toy_root}", f"trainer.resume={tiny_run}", f"hydra.run.dir={inside}",
                 cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "inside the other" in proc.stderr and "Traceback" not in proc.stderr
    assert listing(tiny_run) == before


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    return victim


def test_the_run_lock_never_writes_through_a_link(tmp_path: Path) -> None:
    from dlzoo.engine.assembly.folders import lock_holder, run_lock
    from dlzoo.errors import DlzooError

    victim = _victim(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(victim)
    with pytest.raises(DlzooError, match="is a link"), run_lock(tmp_path / "run"):
        pass
    assert victim.read_text() == "precious\n" and (tmp_path / "run" / ".lock").is_symlink()
    assert lock_holder(tmp_path / "run") is None  # not read through the link either


@pytest.mark.parametrize("planted", [".lock", "train.log", "checkpoints/last.pt", "train"])
def test_a_link_planted_in_a_run_folder_is_refused_and_its_target_kept(
    planted: str, tiny_run: Path, toy_root: Path, tmp_path: Path
) -> None:
    victim = _victim(tmp_path)
    link = tiny_run / planted
    if link.is_dir():
        shutil.rmtree(link)
    link.unlink(missing_ok=True)
    link.symlink_to(victim if planted != "train" else tmp_path)
    if planted == "checkpoints/last.pt":  # nothing to resume then: the run goes into this folder anew
        shutil.copy(victim, tiny_run / "checkpoints" / "keep.pt")
        args = [f"hydra.run.dir={tiny_run}"]
    else:
        args = [f"trainer.resume={tiny_run}"]
    before = listing(tmp_path)
    proc = dlzoo("train", *TINY, f"data.root={toy_root}", "trainer.epochs=2", *args, cwd=tmp_path)
    assert proc.returncode == 2 and "is a link" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert victim.read_text() == "precious\n" and link.is_symlink()
    assert {k: v for k, v in listing(tmp_path).items() if not k.startswith("outputs")} == before


def test_a_hydra_run_dir_holding_links_is_refused_before_hydra_writes(toy_root: Path, tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").symlink_to(victim)
    proc = dlzoo("train", *TINY, f"data.root={toy_root}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2 and "is a link" in proc.stderr and "Traceback" not in proc.stderr
    assert victim.read_text() == "precious\n"


def test_a_tune_folder_with_a_linked_lock_is_refused(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / ".lock").symlink_to(victim)
    proc = dlzoo("tune", "search=smoke", "--trials", "1", "--out", str(tmp_path / "search"), cwd=tmp_path)
    assert proc.returncode == 2 and "is a link" in proc.stderr and "Traceback" not in proc.stderr
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("extra", [[], ["trainer.stack=2"]])
def test_non_finite_values_at_a_histogram_step_are_the_divergence_error(
    extra: list[str], toy_root: Path, tmp_path: Path
) -> None:
    from dlzoo.errors import DlzooError

    cfg = compose_and_validate([*TINY, f"data.root={toy_root}", "model.init=constant", "model.init_args.value=nan",
                                "trainer.histogram_every_n_steps=1", *extra])  # fmt: skip
    with pytest.raises(DlzooError, match="diverged"):
        run(cfg, tmp_path / "run")


def test_a_histogram_of_a_diverging_layer_keeps_its_finite_values(tmp_path: Path) -> None:
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dlzoo.engine.recording.tracking import RunTracker

    nan, inf = float("nan"), float("inf")
    with RunTracker(tmp_path, 1, progress=False) as tracker:
        tracker.log_histograms(1, {"all_bad": torch.tensor([nan, inf, -inf]), "some": torch.tensor([1.0, nan, 2.0])})
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    (tag,) = events.Tags()["histograms"]
    assert "some" in tag and events.Histograms(tag)[0].histogram_value.num == 2


def test_git_commit_is_the_commit_of_the_repository_holding_the_package(tmp_path: Path) -> None:
    import subprocess

    from dlzoo.engine.assembly.folders import git_commit

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path / "repo"), *args], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    package = tmp_path / "repo" / "src" / "dlzoo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    assert git_commit(package) == git("rev-parse", "HEAD")
    (package / "__init__.py").write_text("changed = 1\n")
    assert git_commit(package) == git("rev-parse", "HEAD") + "-dirty"
    venv_copy = tmp_path / "repo" / ".venv" / "site-packages" / "dlzoo"  # installed inside some checkout
    venv_copy.mkdir(parents=True)
    (venv_copy / "__init__.py").write_text("")
    assert git_commit(venv_copy) is None and git_commit(tmp_path / "nowhere") is None
    repo = Path(__file__).resolve().parents[2]
    if (repo / ".git").exists():  # this checkout itself records its commit (once null: .git was looked for in dlzoo/)
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert (git_commit() or "").startswith(head.stdout.strip())


@pytest.mark.parametrize("launcher", ["parallel", "joblib", "submitit_local", "slurm_example"])
def test_a_sweep_on_a_plain_install_names_the_launchers_extra(launcher: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from dlzoo.cli import precheck

    # As on `pip install .` without the extra: no hydra_plugins package at all, so importing under it fails.
    for name in [m for m in sys.modules if m.startswith("hydra_plugins")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "hydra_plugins", None)
    problem = precheck(["-m", f"hydra/launcher={launcher}", "model=softmax,mlp"])
    assert problem is not None and "pip install 'dlzoo[launchers]'" in problem


def test_a_run_that_collapses_to_chance_says_so_and_points_at_its_best_epoch(
    fmnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import torch

    from dlzoo.engine.assembly import one_model

    models: list[torch.nn.Module] = []
    real_setup = one_model.setup_model

    def keep(*args: object, **kwargs: object) -> object:
        built = real_setup(*args, **kwargs)
        models.append(built[0])
        return built

    def wreck(epoch: int, metrics: dict) -> None:
        """What a climbing one-cycle rate did to the README's recipe: after epoch 1 the net answers one class."""
        if epoch == 1:
            out = [m for m in models[0].modules() if isinstance(m, torch.nn.Linear)][-1]
            with torch.no_grad():
                for p in models[0].parameters():
                    p.zero_()
                    p.requires_grad_(p is out.bias)
                out.bias.copy_(torch.tensor([30.0] + [0.0] * 9))

    monkeypatch.setattr(one_model, "setup_model", keep)
    overrides = ["data=fashion_mnist", f"data.root={fmnist_root}", "data.train_subset=2000", "trainer.batch_size=50",
                 "data.val_size=500", "data.test_subset=500", "trainer.threads=1", "trainer.epochs=3",
                 "trainer.figures=false", "model=mlp_xavier", "model.hidden=[64]"]  # fmt: skip
    metrics = run(compose_and_validate(overrides), tmp_path / "run", on_epoch_end=wreck)
    err = " ".join(capsys.readouterr().err.split())
    fell = json.loads((tmp_path / "run" / "metrics.json").read_text())["collapsed"]
    assert fell == metrics["collapsed"] and fell["best_epoch"] == 1 and fell["best_val_acc"] > 0.6
    assert fell["final_val_acc"] < 0.15 and fell["checkpoints"] == [str(tmp_path / "run/checkpoints/best-epoch001.pt")]
    assert "Training collapsed" in err and "best-epoch001.pt" in err

    healthy = [{"epoch": 1, "val/acc": 0.9}, {"epoch": 2, "val/acc": 0.95}]
    assert one_model.collapse(healthy, 10) is None
    assert (
        one_model.collapse([{"epoch": 1, "val/acc": 0.3}, {"epoch": 2, "val/acc": 0.1}], 10) is None
    )  # never far above
    issue = [0.952, 0.95, 0.9, 0.2, 0.1135]  # the README recipe's curve in the issue
    assert one_model.collapse([{"epoch": i + 1, "val/acc": a} for i, a in enumerate(issue)], 10)["best_epoch"] == 1


def test_of_two_runs_started_at_once_into_one_folder_the_refused_one_changes_nothing(
    toy_root: Path, tmp_path: Path
) -> None:
    import json
    import os
    import subprocess

    from omegaconf import OmegaConf

    from tests.helpers import DLZOO

    folder = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"COLUMNS": "200"}

    def start(seed: int) -> subprocess.Popen[str]:
        args = ["train", *TINY, f"data.root={toy_root}", f"trainer.seed={seed}", f"hydra.run.dir={folder}"]
        return subprocess.Popen([*DLZOO, *args], cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)  # fmt: skip

    procs = {seed: start(seed) for seed in (1, 2)}
    outcome = {seed: (p.wait(timeout=300), p.communicate()[1]) for seed, p in procs.items()}
    won = [seed for seed, (code, _) in outcome.items() if code == 0]
    assert len(won) == 1, outcome
    lost = ({1, 2} - set(won)).pop()
    assert outcome[lost][0] == 2 and "in use by another dlzoo process" in outcome[lost][1]
    saved = OmegaConf.load(folder / ".hydra" / "config.yaml")  # the config of the run whose results are there
    assert saved.trainer.seed == won[0] == json.loads((folder / "metrics.json").read_text())["seed"]
    assert f"trainer.seed={won[0]}" in (folder / ".hydra" / "overrides.yaml").read_text()


def test_a_shared_checkpoint_or_run_folder_never_resolves_environment_secrets(
    tiny_run: Path, toy_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from omegaconf import OmegaConf

    from tests.helpers import DLZOO

    monkeypatch.setenv("DLZOO_SECRET", "hunter2")
    state = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=False)
    state["config"]["model"]["activation"] = "${oc.env:DLZOO_SECRET}"
    state["config"]["optim"]["name"] = "\\\\${oc.env:DLZOO_SECRET}"  # an escaped backslash, then the call
    shared = tmp_path / "shared.pt"
    torch.save(state, shared)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    args = ["eval", f"ckpt={shared}", f"data.root={toy_root}"]  # every loader goes through load_checkpoint
    proc = subprocess.run([*DLZOO, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "hunter2" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert proc.returncode == 2 and "oc.env:DLZOO_SECRET" in proc.stderr, proc.stderr

    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_run, sweep / "0")
    (sweep / "0" / ".hydra").mkdir()
    config = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=False)["config"]
    config["model"]["activation"] = "${oc.env:DLZOO_SECRET}"
    (sweep / "0" / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    (sweep / "0" / ".hydra" / "overrides.yaml").write_text("- model.activation=${oc.env:DLZOO_SECRET}\n")
    proc = subprocess.run([*DLZOO, "report", str(sweep)], cwd=tmp_path, env=env, capture_output=True, text=True)
    written = "".join(p.read_text(errors="replace") for p in sweep.glob("report*") if p.is_file())
    assert "hunter2" not in proc.stdout + proc.stderr + written and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("payload", [
    "hydra:\n  callbacks:\n    wipe:\n      _target_: builtins.open\n      file: {victim}\n      mode: w\n",
    "model:\n  activation:\n    _target_: builtins.open\n    file: {victim}\n    mode: w\n",
])  # fmt: skip
def test_a_config_that_would_run_code_is_refused_before_hydra_loads_it(payload: str, tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    out = tmp_path / "tune"
    out.mkdir()
    (out / "best.yaml").write_text("defaults:\n  - train\n  - _self_\n" + payload.format(victim=victim))
    proc = dlzoo("train", "--config-dir", str(out), "--config-name", "best", "debug=fast", cwd=tmp_path)
    assert proc.returncode == 2 and "never import paths" in proc.stderr and "Traceback" not in proc.stderr
    assert victim.read_text() == "precious\n"


def test_best_yaml_holds_only_dlzoos_own_keys() -> None:
    from dlzoo.sweeps.tune.report import own_keys

    trial = {"model": {"hidden": [8]}, "optim": {"lr": 0.1}, "search": {"n_trials": 2},
             "hydra": {"callbacks": {"x": {"_target_": "builtins.open"}}}, "extra": 1}  # fmt: skip
    assert own_keys(trial) == {"model": {"hidden": [8]}, "optim": {"lr": 0.1}}


DAMAGE = {
    "yaml": (".hydra/config.yaml", b"model: [unclosed\n"),
    "yaml_list": (".hydra/config.yaml", b"- 1\n- 2\n"),
    "yaml_bytes": (".hydra/config.yaml", b"\xff\xfe\x00bad"),
    "overrides": (".hydra/overrides.yaml", b"{[\n"),
    "json_bytes": ("metrics.json", b"\xff\xfe{}"),
    "json_list": ("metrics.json", b"[1, 2]"),
    "json_truncated": ("metrics.json", b'{\n  "train_loss": 0.5,\n  "test'),
    "json_partial": ("metrics.json", b'{"train_loss": 0.5}'),
    "stack_string": ("metrics.json", b'{"test_acc": 0.5, "stack": "3"}'),
}


def _sweep_of(tiny_run: Path, root: Path, names: list[str]) -> None:
    """A sweep folder: two healthy seeds of one config (seed 2's test_acc NaN: a diverged seed), then a run per
    kind of damage, each made from the healthy run's real files."""
    import json

    import torch
    from omegaconf import OmegaConf

    config = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=False)["config"]
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for i, name in enumerate(["healthy1", "healthy2", *names]):
        folder = root / f"{i}_{name}"
        (folder / ".hydra").mkdir(parents=True)
        config["trainer"]["seed"] = i + 1
        (folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
        (folder / ".hydra" / "overrides.yaml").write_text(f"- model=mlp\n- trainer.seed={i + 1}\n")
        (folder / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      model: mlp\n")
        nan = float("nan") if name == "healthy2" else metrics["test_acc"]
        (folder / "metrics.json").write_text(json.dumps(metrics | {"test_acc": nan}))
        if name in DAMAGE:
            where, data = DAMAGE[name]
            (folder / where).parent.mkdir(parents=True, exist_ok=True)
            (folder / where).write_bytes(data)


def test_report_lists_every_damaged_run_as_damaged_and_never_counts_it(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dlzoo.cli import main

    root = tmp_path / "sweep"
    _sweep_of(tiny_run, root, list(DAMAGE))
    assert main(["report", str(root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"failed or unfinished runs ({len(DAMAGE)})" in out
    for i, name in enumerate(DAMAGE):
        assert f"{i + 2}_{name}" in out, name  # listed with its folder
    assert "│ 2 │ 1, 2 │" in out  # n counts the two healthy seeds only, the NaN one among them
    assert "damaged" in (root / "report" / "report.md").read_text()


# The README Quickstart's SELU line, with the one-cycle peak it needs: at the schedule's default max_lr 0.01 the
# rate climbs past what this net takes (val acc 0.952 at epoch 3, chance from epoch 4 on, test acc 0.1136).
SELU_RECIPE = ["experiment=selu_self_normalizing", "optim=nadam", "sched=onecycle", "sched.max_lr=3e-3", "reg.l2=1e-4",
               "eval.mc_samples=20"]  # fmt: skip


@pytest.mark.slow
def test_the_readme_selu_recipe_trains_without_collapsing(mnist_root: Path, tmp_path: Path) -> None:
    """The whole 15-epoch recipe on MNIST, seed 777 (about 10 minutes on one busy core)."""
    import json

    run_dir = tmp_path / "run"
    proc = dlzoo("train", *SELU_RECIPE, f"data.root={mnist_root}", "trainer.threads=1", "trainer.figures=false",
                 f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=3600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "collapsed" not in metrics and metrics["test_acc"] > 0.98 and metrics["test_mc_acc"] > 0.98


# The fuzz: hostile input at every front door, in-process through the CLI's own error boundary (dlzoo.cli.main),
# so anything but exit 0 or 2 (a traceback) fails the example. Each checks that nothing was written beside the
# folder it works in. A bounded budget: a few seconds each.
FUZZ = settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_idx_folder

    root = tmp_path_factory.mktemp("fuzz")
    toy = make_idx_folder(root / "toy", n_train=300, n_test=100)
    folder = root / "made"
    run(compose_and_validate(_fuzz_args(toy)), folder)
    return folder


def _fuzz_args(toy: Path) -> list[str]:
    return [*TINY, f"data.root={toy}", "data.val_size=100"]


def _cli(args: list[str]) -> int:
    from dlzoo.cli import main

    try:
        return main(args)
    except SystemExit as e:  # argparse's usage errors
        return int(e.code or 0)


@FUZZ
@given(npy=st.one_of(st.binary(max_size=300),
                     st.tuples(st.lists(st.integers(0, 40), max_size=4), st.sampled_from(["u1", "f4", "f8", "i8"]))),
       suffix=st.sampled_from([".npy", ".png"]))  # fmt: skip
def test_fuzz_predict_inputs(fuzz_run: Path, npy: bytes | tuple[list[int], str], suffix: str) -> None:
    import io

    import numpy as np

    folder = fuzz_run.parent / "inputs"
    folder.mkdir(exist_ok=True)
    path = folder / f"x{suffix}"
    if isinstance(npy, bytes):
        path.write_bytes(npy)
    else:
        shape, dtype = npy
        buffer = io.BytesIO()
        np.save(buffer, np.full(shape, 3, dtype=dtype))
        path.write_bytes(buffer.getvalue())
    before = listing(fuzz_run.parent)
    code = _cli(["predict", f"ckpt={fuzz_run}", f"input={path}", "format=json"])
    assert code in (0, 2) and listing(fuzz_run.parent) == before


@FUZZ
@given(data=st.data())
def test_fuzz_damaged_run_folders_for_report_eval_and_resume(fuzz_run: Path, data: st.DataObject) -> None:
    root = fuzz_run.parent / "sweeps" / str(len(list((fuzz_run.parent / "sweeps").glob("*"))) if (
        fuzz_run.parent / "sweeps").is_dir() else 0)  # fmt: skip
    names = data.draw(st.lists(st.sampled_from(sorted(DAMAGE)), max_size=3, unique=True))
    _sweep_of(fuzz_run, root, names)
    victim = root / f"2_{names[0]}" if names else root / "0_healthy1"
    where = data.draw(st.sampled_from(["metrics.json", ".hydra/config.yaml", "train.log"]))
    (victim / where).write_bytes(data.draw(st.binary(max_size=200)))
    real = (fuzz_run / "checkpoints" / "last.pt").read_bytes()  # a run that could resume, or its checkpoint
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(real))))  # truncated there, then garbage
    ckpt = real if cut is None else real[:cut] + data.draw(st.binary(max_size=200))
    (victim / "checkpoints").mkdir(exist_ok=True)
    (victim / "checkpoints" / "last.pt").write_bytes(ckpt)
    cwd = fuzz_run.parent / "cwd"
    cwd.mkdir(exist_ok=True)
    before = {k: v for k, v in listing(fuzz_run.parent).items() if not k.startswith(("sweeps", "cwd"))}
    assert _cli(["report", str(root)]) in (0, 2)
    assert _cli(["eval", f"ckpt={victim}"]) in (0, 2)
    _ladder_reads(victim, root / "ladder")
    # A real resume, as `dlzoo train` runs it: it trains on from the damaged folder or refuses in one paragraph.
    home, handlers = Path.cwd(), list(logging.root.handlers)
    os.chdir(cwd)
    try:
        code = _cli(["train", *_fuzz_args(fuzz_run.parent / "toy"), f"trainer.resume={victim}"])
        assert code in (0, 2)
    finally:
        os.chdir(home)
        for handler in set(logging.root.handlers) - set(handlers):  # Hydra's train.log, as a process exit would
            logging.root.removeHandler(handler)
            handler.close()
    assert {k: v for k, v in listing(fuzz_run.parent).items() if not k.startswith(("sweeps", "cwd"))} == before
    assert not any(p.is_file() for p in cwd.rglob("*"))  # nothing left in the working folder either


def _ladder_reads(run_folder: Path, out: Path) -> None:
    """What `dlzoo ladder --resume --out` reads before it trains (is each run done?) and after (the table), over
    the damaged run as a rung's seed: no exception but a DlzooError."""
    import shutil

    from dlzoo.errors import DlzooError
    from dlzoo.sweeps.ladder import _done, plan
    from dlzoo.sweeps.ladder_table import collect, rows

    shutil.copytree(run_folder, out / "lab10_1_softmax" / "seed1", symlinks=True)
    jobs = plan(["lab10_1_softmax"], 1, None, [], out)
    try:
        _done(jobs[0].folder)
        rows(collect(jobs))
    except DlzooError:
        pass


BLOCK = st.fixed_dictionaries(
    {"type": st.sampled_from(["linear", "conv", "act", "maxpool", "flatten", "dropout", "batchnorm", "nope"])},
    optional={"out": st.one_of(st.integers(-2, 64), st.just(10**9), st.text(max_size=3)),
              "kernel": st.integers(-1, 40), "p": st.floats(-1, 2)},
)  # fmt: skip


@FUZZ
@given(blocks=st.one_of(st.lists(BLOCK, max_size=5), st.text(max_size=30)), extra=st.sampled_from(["", "&a [*a]"]))
def test_fuzz_lego_yaml(blocks: object, extra: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    import yaml

    folder = tmp_path_factory.mktemp("lego")
    (folder / "model").mkdir()
    text = yaml.safe_dump({"arch": "sequential", "blocks": blocks}) + (f"x: {extra}\n" if extra else "")
    (folder / "model" / "mine.yaml").write_text(text)
    before = listing(folder.parent)
    assert _cli(["validate", "--config-dir", str(folder), "model=mine"]) in (0, 2)
    assert listing(folder.parent) == before


@FUZZ
@given(pairs=st.lists(st.tuples(st.sampled_from(["hydra.run.dir", "trainer.resume", "data.root", "model.hidden",
                                                "trainer.stack", "model.act_args.maxout_k", "launcher"]),
                                st.sampled_from(["/proc/x", "/sys/y", "a" * 300, "${oc.env:UNSET}", "ü/ß",
                                                 "[100000000]", "100000", "-1", "auto", "nope"])),
                      min_size=1, max_size=3))  # fmt: skip
def test_fuzz_train_overrides_fail_cleanly_before_training(pairs: list[tuple[str, str]], tmp_path_factory) -> None:
    from dlzoo.config.compose import precheck

    folder = tmp_path_factory.mktemp("cwd")
    args = [f"hydra/launcher={v}" if k == "launcher" else f"{k}={v}" for k, v in pairs]
    problem = precheck(args)  # what `dlzoo train` runs before Hydra: a config no run can take stops here
    assert problem is None or ("Traceback" not in problem and problem.strip())
    assert listing(folder) == {}


def test_a_run_without_checkpoints_leaves_no_checkpoints_folder(
    toy_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "run"
    run(compose_and_validate([*TINY, f"data.root={toy_root}", "data.val_size=100", "trainer.checkpoint.enabled=false"]),
        folder)  # fmt: skip
    assert (folder / "metrics.json").is_file() and not (folder / "checkpoints").exists()
    assert "(metrics.json, TensorBoard events)" in capsys.readouterr().out  # where the results are: no checkpoints/
