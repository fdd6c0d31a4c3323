"""`dlzoo ladder`: the lectures' accuracy ladder (labs 10-1 to 11-5), each rung × seed a normal `dlzoo train` run
in <out>/<rung>/seed<k>/, then one table (terminal, ladder.md, ladder.csv) and a bar chart (ladder.png) against
the lecture's figures."""

from __future__ import annotations

import argparse
import csv
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dlzoo.engine.stopping import Interrupted
from dlzoo.errors import DlzooError
from dlzoo.sweeps.report import Group, group_runs, last_error, load_run, markdown, mean_std, plain_number

# rung (= conf/experiment/<rung>.yaml): (label, what changed from the rung before, lecture test accuracy on MNIST).
# The figures are the outputs recorded at the end of each TF lab file of hunkim/DeepLearningZeroToAll (single runs,
# tf.set_random_seed(777)), as quoted in each experiment's YAML.
RUNGS: dict[str, tuple[str, str, float | None]] = {
    "lab10_1_softmax": ("10-1 softmax", "softmax regression, N(0,1) init", 0.9035),
    "lab10_2_mlp": ("10-2 NN", "+ 2 hidden ReLU layers of 256", 0.9455),
    "lab10_3_xavier": ("10-3 Xavier", "Xavier init instead of N(0,1)", 0.9783),
    "lab10_4_deep": ("10-4 deep", "deeper and wider: 4 × 512", 0.9742),
    "lab10_5_dropout": ("10-5 dropout", "+ dropout 0.3", 0.9804),
    "lab10_7_bn": ("10-7 batch norm", "+ batch norm, Adam lr 0.01", 0.9826),
    "lab11_1_cnn": ("11-1 CNN", "a 2-layer CNN (32, 64) instead of the MLP", 0.9885),
    "lab11_2_cnn_deep": ("11-2 deep CNN", "3 conv layers (32, 64, 128), FC 625, dropout", 0.9938),
    "lab11_5_ensemble": ("11-5 ensemble", "7 deep CNNs, summed logits, 20 epochs", 0.9952),
}
# The ladder owns these; a user override of them would break the <rung>/seed<k> layout.
OWNED = ("experiment", "trainer.seed", "hydra.run.dir", "hydra.sweep.dir", "trainer.resume")


@dataclass
class Job:
    rung: str
    seed: int
    folder: Path
    overrides: list[str]


def plan(
    rungs: list[str],
    seeds: int,
    epochs: int | None,
    overrides: list[str],
    out: Path,
    rung_seeds: dict[str, int] | None = None,
) -> list[Job]:
    """One job per rung × seed (seeds 1..N, or 1..rung_seeds[rung]), in ladder order; data=mnist unless the
    overrides pick another."""
    rung_seeds = rung_seeds or {}
    unknown = [r for r in rungs if r not in RUNGS]
    if unknown:
        raise DlzooError(f"unknown rung(s) {', '.join(unknown)}; choices: {', '.join(RUNGS)}.")
    owned = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in OWNED or o.startswith("-")]
    if owned:
        raise DlzooError(
            f"dlzoo ladder sets {', '.join(owned)} itself. Fix: drop it; use --seeds N, --rungs, --out, --resume."
        )
    if seeds < 1 or (epochs is not None and epochs < 1) or any(n < 1 for n in rung_seeds.values()):
        raise DlzooError(f"--seeds {seeds} / --epochs {epochs} / --rung-seeds: each must be at least 1.")
    stray = [r for r in rung_seeds if r not in rungs]
    if stray:
        raise DlzooError(f"--rung-seeds names {', '.join(stray)}, which this ladder does not run (--rungs).")
    extra = [f"trainer.epochs={epochs}"] if epochs is not None else []
    extra.append("trainer.hparams_experiment=false")  # the ladder writes one experiment over all its runs
    return [
        Job(rung, seed, out / rung / f"seed{seed}", [f"experiment={rung}", f"trainer.seed={seed}", *extra, *overrides])
        for rung in rungs
        for seed in range(1, rung_seeds.get(rung, seeds) + 1)
    ]


def parse_rung_seeds(text: str) -> dict[str, int]:
    """`lab11_2_cnn_deep=3,lab11_5_ensemble=1` -> {rung: seeds}."""
    out = {}
    for item in filter(None, text.split(",")):
        rung, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit():
            raise DlzooError(f"--rung-seeds {text!r}: write rung=N pairs, e.g. lab11_2_cnn_deep=3,lab11_5_ensemble=1.")
        out[rung.strip()] = int(n)
    return out


def check(jobs: list[Job]) -> None:
    """Validate every job's config and find each dataset before the first run, so a typo or missing data fails
    at once instead of after hours of earlier rungs. Spaces the seeds of ensemble rungs (see below)."""
    from dlzoo.config.compose import compose_and_validate
    from dlzoo.data.datasets import locate

    datasets = set()
    for job in jobs:
        try:
            cfg = compose_and_validate(job.overrides)
        except DlzooError as e:
            raise DlzooError(f"rung {job.rung}, seed {job.seed}: {e}") from None
        datasets.add((cfg.data.name, cfg.data.root, cfg.data.download))
        size = cfg.ensemble.size
        if size > 1:
            # Members train seeds s, s+1, ...: ensemble k starts at (k-1)*size+1 so no two ensembles share a
            # member (seeds 1..N would share all but one, and their spread would understate the real one).
            seed = (job.seed - 1) * size + 1
            job.overrides = [f"trainer.seed={seed}" if o.startswith("trainer.seed=") else o for o in job.overrides]
    for name, root, download in sorted(datasets, key=str):
        locate(name, root, download)


def run_job(job: Job, resume: bool) -> int:
    """One `dlzoo train` in a subprocess (a crash or leak stays in it); its output goes to <run>/ladder.log."""
    overrides = list(job.overrides)
    if resume and (job.folder / "checkpoints" / "last.pt").is_file():
        overrides.append(f"trainer.resume={job.folder}")  # an unfinished run continues from its last epoch
    job.folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "dlzoo.train", *overrides, f"hydra.run.dir={job.folder}"]
    with (job.folder / "ladder.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.wait()  # the same Ctrl-C reached the run, which now writes its checkpoint
            raise


def threads_per_job(jobs: int, overrides: list[str]) -> list[str]:
    """`trainer.threads=<cores // jobs>` for runs side by side (one thread each when jobs = cores): more threads
    than cores make OpenMP spin-wait and slow every run. None when the user set trainer.threads or runs one job."""
    from dlzoo.config.launch import usable_cores

    if jobs == 1 or any(o.split("=", 1)[0].lstrip("+") == "trainer.threads" for o in overrides):
        return []
    return [f"trainer.threads={max(1, usable_cores() // jobs)}"]


def run_all(todo: list[Job], jobs: int, resume: bool) -> None:
    """Run `todo` with up to `jobs` side by side; one line per finished run with the estimated time left."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from dlzoo.console import say

    took: dict[str, list[float]] = {}  # rung -> seconds of its finished runs, for the estimate
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending = {pool.submit(_timed, job, resume): job for job in todo}
        done_count = 0
        while pending:
            try:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                # The terminal's Ctrl-C reached every running run (one process group): they checkpoint and exit,
                # and leaving the pool waits for them. Queued runs must not start.
                for future in pending:
                    future.cancel()
                raise
            for future in finished:
                job = pending.pop(future)
                code, seconds = future.result()  # re-raises a KeyboardInterrupt from the worker
                took.setdefault(job.rung, []).append(seconds)
                done_count += 1
                left = eta(list(pending.values()), took, jobs)
                elapsed = time.perf_counter() - started
                say(f"[{done_count}/{len(todo)}] {job.rung} seed {job.seed}: {outcome(job, code)} ({seconds:.0f} s)"
                    f"  ·  {_clock(elapsed)} elapsed, about {_clock(left)} left")  # fmt: skip


def _timed(job: Job, resume: bool) -> tuple[int, float]:
    t0 = time.perf_counter()
    return run_job(job, resume), time.perf_counter() - t0


def outcome(job: Job, code: int) -> str:
    """'test acc 0.9821', or why the run failed (the last error line of its log)."""
    if (job.folder / "metrics.json").is_file():
        value = (load_run(job.folder).metrics or {}).get("test_acc")
        if isinstance(value, float):
            return f"test acc {value:.4f}"
    return f"FAILED (exit {code}): {last_error(job.folder)}"


def eta(pending: list[Job], took: dict[str, list[float]], jobs: int) -> float:
    """Seconds until the pending runs finish: each costs its rung's mean so far (or, for a rung not yet seen,
    the mean of all finished runs), shared over the `jobs` slots."""
    everything = [t for times in took.values() for t in times]
    fallback = sum(everything) / len(everything) if everything else 0.0
    total = sum(sum(took[j.rung]) / len(took[j.rung]) if j.rung in took else fallback for j in pending)
    return total / jobs


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@dataclass
class Rung:
    """One row of the ladder: the rung's finished runs (as report groups them) and its failed jobs."""

    name: str
    group: Group | None
    failed: list[Job]

    @property
    def mean(self) -> float | None:
        return self.group.mean("test_acc") if self.group else None

    @property
    def std(self) -> float | None:
        return self.group.std("test_acc") if self.group else None

    @property
    def n(self) -> int:
        return len(self.group.runs) if self.group else 0


def collect(jobs: list[Job]) -> list[Rung]:
    """The ladder's rows in rung order, aggregated by dlzoo.sweeps.report from the jobs' run folders."""
    runs = [load_run(j.folder) for j in jobs if (j.folder / ".hydra" / "config.yaml").is_file()]
    groups = {g.key[0][1]: g for g in group_runs(runs, ["experiment"], "test_acc")}
    rungs = list(dict.fromkeys(j.rung for j in jobs))
    failed = [j for j in jobs if not (j.folder / "metrics.json").is_file()]
    return [Rung(r, groups.get(r), [j for j in failed if j.rung == r]) for r in rungs]


HEADER = ["rung", "what changed", "lecture (MNIST)", "ours: test acc", "n", "Δ vs rung above", "epochs", "s / run"]


def rows(rungs: list[Rung]) -> list[list[str]]:
    out, previous = [], None
    for r in rungs:
        label, change, lecture = RUNGS[r.name]
        ours = mean_std(r.mean, r.std) + (f" ({len(r.failed)} failed)" if r.failed else "")
        delta = f"{r.mean - previous:+.4f}" if r.mean is not None and previous is not None else "–"
        wall = r.group.mean("wall_time_s") if r.group else None
        out.append(
            [
                f"{label} ({r.name})",
                change,
                "–" if lecture is None else f"{lecture:.4f}",
                ours,
                str(r.n),
                delta,
                _epochs(r),
                "–" if wall is None else f"{wall:.0f}",
            ]
        )
        previous = r.mean if r.mean is not None else previous
    return out


def _epochs(r: Rung) -> str:
    if not r.group or not r.group.runs:
        return "–"
    config = r.group.runs[0].config
    size = config.ensemble.size
    return f"{config.trainer.epochs}" + (f" × {size} members" if size > 1 else "")


def caption(rungs: list[Rung], command: str) -> str:
    run = next((g.runs[0] for r in rungs if (g := r.group) and g.runs), None)
    where = "no finished run"
    if run is not None and run.metrics is not None:
        device, name = run.metrics.get("device"), run.metrics.get("device_name")
        where = f"{run.config.data.name}, {device}" + (f" ({name})" if name and name != device else "")
        threads = run.metrics.get("threads")
        where += f", {threads} thread(s)" if threads else ""
    return (
        f"Test accuracy, mean ± sample std over the n seeds of each rung (trainer.seed=1..n; an ensemble k "
        f"trains members from seed (k-1)×size+1 on) on {where}. The lecture's figures are its TF labs on MNIST. "
        f"Command: {command}"
    )


def write_markdown(rungs: list[Rung], table: list[list[str]], text: str, path: Path) -> None:
    failed = [(r.name, j) for r in rungs for j in r.failed]
    lines = [f"- {rung} seed {job.seed} (`{job.folder}`): {last_error(job.folder)}" for rung, job in failed]
    tail = f"\n## Failed runs ({len(failed)})\n\n" + "\n".join(lines) + "\n" if failed else ""
    path.write_text(f"{text}\n\n{markdown(HEADER, table)}\n{tail}")


def write_csv(rungs: list[Rung], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "rung",
                "label",
                "change",
                "lecture_mnist",
                "test_acc_mean",
                "test_acc_std",
                "n",
                "failed",
                "epochs",
                "wall_time_s_mean",
            ]
        )
        for r in rungs:
            label, change, lecture = RUNGS[r.name]
            wall = r.group.mean("wall_time_s") if r.group else None
            writer.writerow(
                [
                    r.name,
                    label,
                    change,
                    lecture,
                    plain_number(r.mean),
                    plain_number(r.std),
                    r.n,
                    len(r.failed),
                    _epochs(r),
                    plain_number(wall),
                ]
            )


def write_view(rungs: list[Rung], table: list[list[str]], out: Path) -> None:
    """The ladder's TensorBoard view (dashboards.write_ladder_view): the rungs on one chart against the lecture,
    and an HParams table of the ladder's runs led by the rung."""
    from omegaconf import OmegaConf

    from dlzoo.engine.dashboards import read_epoch_curves, write_ladder_view
    from dlzoo.engine.hparams import run_hparams

    points = [(RUNGS[r.name][0], r.mean, RUNGS[r.name][2]) for r in rungs]
    # An ensemble's curves are its members' (the ensemble folder logs only the combined test accuracy).
    curves = {r.name: [read_epoch_curves(folder) for run in r.group.runs
                       for folder in (sorted(run.folder.glob("member*")) or [run.folder])]
              for r in rungs if r.group}  # fmt: skip
    runs = [run for r in rungs if r.group for run in r.group.runs]
    sessions = [run_hparams(OmegaConf.to_container(run.config, resolve=True), run.choices) for run in runs]  # type: ignore[arg-type]
    write_ladder_view(out, points, curves, sessions, markdown(HEADER, table), out / "ladder.png")


def lab_epochs(rung: str) -> int:
    """The epochs the lab itself trains (its experiment YAML), to flag rungs that ran a shorter budget."""
    from dlzoo.config.compose import compose_config

    return int(compose_config([f"experiment={rung}"]).trainer.epochs)


def draw_chart(rungs: list[Rung], title: str, path: Path) -> None:
    """Dot-and-whisker chart: per rung our mean (dot) ± sample std (whisker, only for n > 1), each seed as a
    faint point, and the lecture's figure as a hollow diamond beside it; each mean is written next to its dot,
    each tick says n and epochs, and a rung trained for fewer epochs than its lab is flagged. Accuracies near 1
    differ by tenths of a point, so the axis spans just the values shown, stated on the axis itself."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(7.0, 1.25 * len(rungs) + 2), 5.0))
    shown: list[float] = []
    short: list[str] = []
    labels = []
    for i, r in enumerate(rungs):
        label, _, lecture = RUNGS[r.name]
        epochs = _epochs(r)
        if r.group and r.group.runs and r.group.runs[0].config.trainer.epochs < lab_epochs(r.name):
            short.append(label)
        labels.append(f"{label}\nn={r.n}" + (f", {epochs} ep" if epochs != "–" else "") + ("" if r.mean is not None
                      else "\n(no finished run)"))  # fmt: skip
        if lecture is not None:
            ax.scatter([i + 0.18], [lecture], marker="D", facecolors="none", edgecolors="tab:red", s=46, zorder=3,
                       label="lecture (TF lab, 1 run)" if i == 0 else None)  # fmt: skip
            shown.append(lecture)
        if r.mean is None or r.group is None:
            continue
        seeds = [run.metrics["test_acc"] for run in r.group.runs if run.metrics]
        ax.scatter([i - 0.12] * len(seeds), seeds, s=10, color="tab:blue", alpha=0.35, zorder=2,
                   label="ours: each seed" if i == 0 else None)  # fmt: skip
        if r.n > 1 and r.std is not None:
            ax.errorbar([i], [r.mean], yerr=[r.std], fmt="none", ecolor="tab:blue", capsize=5, zorder=3)
        ax.scatter([i], [r.mean], s=36, color="tab:blue", zorder=4, label="ours: mean ± std" if i == 0 else None)
        ax.annotate(f"{r.mean:.4f}", (i, r.mean), textcoords="offset points", xytext=(-8, 8), ha="right",
                    fontsize=8, color="tab:blue")  # fmt: skip
        shown += seeds
    low, high = (min(shown), max(shown)) if shown else (0.0, 1.0)
    pad = max(0.002, 0.08 * (high - low))
    ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad) if high + pad < 1.0 else 1.0)
    ax.set_xticks(range(len(rungs)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"test accuracy (axis from {ax.get_ylim()[0]:.3f}, not 0)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if short:
        fig.text(0.01, 0.01, f"Shorter budget than the lab: {', '.join(short)}.", fontsize=8, color="tab:orange")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ladder_command(argv: list[str]) -> int:
    """`dlzoo ladder [--seeds N] [--epochs E] [--resume] [--rungs a,b] [--out DIR] [overrides...]`."""
    from dlzoo.console import console, print_error, print_table

    parser = argparse.ArgumentParser(prog="dlzoo ladder", description="Run the lectures' accuracy ladder.")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per rung: trainer.seed=1..N (default 3)")
    parser.add_argument("--rung-seeds", default="", help="seeds for some rungs, e.g. lab11_5_ensemble=1 (else --seeds)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every rung (default: each lab's own)")
    parser.add_argument("--rungs", default=",".join(RUNGS), help=f"comma-separated subset of: {', '.join(RUNGS)}")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/ladder/<timestamp>)")
    parser.add_argument("--resume", action="store_true", help="with --out: skip runs that have a metrics.json")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (default 1), each cores // jobs threads")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. data=fashion_mnist")
    args = parser.parse_intermixed_args(argv)

    if args.resume and args.out is None:
        raise DlzooError("--resume needs --out <the earlier ladder's folder> to know which ladder to continue.")
    out = args.out or Path("outputs/ladder") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    rung_seeds = parse_rung_seeds(args.rung_seeds)
    jobs = plan([r for r in args.rungs.split(",") if r], args.seeds, args.epochs, args.overrides, out, rung_seeds)
    if not args.resume and any((j.folder / ".hydra").is_dir() for j in jobs):
        raise DlzooError(f"{out} already holds ladder runs. Fix: add --resume to continue it, or choose a new --out.")
    check(jobs)
    out.mkdir(parents=True, exist_ok=True)

    todo = [j for j in jobs if not (args.resume and (j.folder / "metrics.json").is_file())]
    if args.jobs < 1:
        raise DlzooError(f"--jobs {args.jobs}: give at least 1 (the runs that train side by side).")
    threads = threads_per_job(args.jobs, args.overrides)
    for job in todo:
        job.overrides += threads
    console.print(f"ladder: {len(jobs)} runs ({len(jobs) - len(todo)} already done) in {out}, {args.jobs} at a "
                  f"time{', ' + threads[0] + ' each' if threads else ''}")  # fmt: skip
    try:
        run_all(todo, args.jobs, args.resume)
    except KeyboardInterrupt:
        hint = (
            f"The interrupted runs checkpointed. Continue with: dlzoo ladder <the same arguments> --resume --out {out}"
        )
        raise Interrupted(None, signal.SIGINT, hint) from None

    rungs = collect(jobs)
    command = "dlzoo ladder " + " ".join(argv)
    table = rows(rungs)
    # Below 120 columns the "what changed" text would wrap every row into a tall column: ladder.md keeps it.
    keep = [i for i in range(len(HEADER)) if i != 1 or console.width >= 120]
    print_table(f"ladder: {out}", [HEADER[i] for i in keep], [[row[i] for i in keep] for row in table],
                caption(rungs, command), right=range(keep.index(2), len(keep)))  # fmt: skip
    write_markdown(rungs, table, caption(rungs, command), out / "ladder.md")
    write_csv(rungs, out / "ladder.csv")
    dataset = next((g.runs[0].config.data.name for r in rungs if (g := r.group) and g.runs), "")
    seeds = "/".join(str(n) for n in dict.fromkeys(r.n for r in rungs))
    draw_chart(rungs, f"accuracy ladder on {dataset}: test accuracy over {seeds} seed(s) per rung (n below)",
               out / "ladder.png")  # fmt: skip
    write_view(rungs, table, out)
    console.print(f"wrote {out}/ladder.md, ladder.csv, ladder.png; dashboards: tensorboard --logdir {out}")
    failed = [j for r in rungs for j in r.failed]
    if failed:
        print_error(
            f"{len(failed)} run(s) failed: "
            + "; ".join(f"{j.rung} seed {j.seed} ({j.folder}/ladder.log)" for j in failed)
        )
        return 1
    return 0
