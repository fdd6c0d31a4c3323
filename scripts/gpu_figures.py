"""The GPU figures of the speed section, as one prepared run for a machine with a CUDA device:

1. lab 10-5 (`experiment=lab10_5_dropout`), its full recipe: 15 epochs of MNIST, training time (target <= 2 s);
2. lab 11-2 (`experiment=lab11_2_cnn_deep`), its full recipe (target <= 6 s);
3. 5 seeds of lab 10-5 stacked (`trainer.stack=5`) against the one seed of 1. (target <= 1.5x);
4. the lab 11-5 ensemble's 7 members stacked (`ensemble.stack=on`) against one member (`ensemble.size=1`, the same
   20 epochs) (target <= 2x);
5. the peer table on the GPU (`scripts/peers.py --device cuda`, one round).

Each training is a real `dlzoo train` in its own process; its time is metrics.json's train_time_s (the training
steps, without start-up, validation or test). Everything lands in --out as JSON, and the table is printed.

    python scripts/gpu_figures.py --data <folder holding mnist/>          # a few minutes on one modern GPU
    python scripts/gpu_figures.py --data ../shared/data --device cpu --quick   # a smoke check of the script
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def train(name: str, overrides: list[str], work: Path) -> dict:
    """One `dlzoo train` run; its metrics.json (for a stack or an ensemble, its first member's too)."""
    folder = work / name
    command = [sys.executable, "-m", "dlzoo.train", *overrides, f"hydra.run.dir={folder}", "trainer.progress=false"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    metrics = json.loads((folder / "metrics.json").read_text())
    first = next((p for p in sorted(folder.glob("seed*")) + sorted(folder.glob("member*"))), None)
    if first is not None:  # a stack's members share one training pass: its time is theirs
        metrics["member"] = json.loads((first / "metrics.json").read_text())
    print(f"{name:<22}{_train_time(metrics):>8.2f} s of training  (wall {metrics['wall_time_s']:.1f} s, "
          f"test acc {metrics['test_acc']:.4f})", flush=True)  # fmt: skip
    return metrics


def _train_time(metrics: dict) -> float:
    return metrics["member"]["train_time_s"] if "member" in metrics else metrics["train_time_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="folder holding mnist/ with the four IDX files")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="20 steps per run, 2-member ensemble: not a figure")
    parser.add_argument("--out", default="outputs/gpu_figures.json")
    args = parser.parse_args(argv)
    common = ["data=mnist", f"data.root={Path(args.data).resolve() / 'mnist'}", f"trainer.device={args.device}"]
    if args.quick:
        common += ["trainer.max_steps=20", "trainer.epochs=1"]
    members = 2 if args.quick else 7
    with tempfile.TemporaryDirectory(prefix="dlzoo-gpu-") as tmp:
        work = Path(tmp)
        plan = {
            "lab10_5": ["experiment=lab10_5_dropout"],
            "lab11_2": ["experiment=lab11_2_cnn_deep"],
            "lab10_5_stack5": ["experiment=lab10_5_dropout", "trainer.stack=5"],
            "lab11_5_member": ["experiment=lab11_5_ensemble", "ensemble.size=1"],
            "lab11_5_stacked": ["experiment=lab11_5_ensemble", f"ensemble.size={members}", "ensemble.stack=on"],
        }
        runs = {name: train(name, [*overrides, *common], work) for name, overrides in plan.items()}
    times = {name: _train_time(m) for name, m in runs.items()}
    figures = {
        "lab10_5_train_s": (times["lab10_5"], 2.0),
        "lab11_2_train_s": (times["lab11_2"], 6.0),
        "stack5_over_one_seed": (times["lab10_5_stack5"] / times["lab10_5"], 1.5),
        "ensemble_over_one_member": (times["lab11_5_stacked"] / times["lab11_5_member"], 2.0),
    }
    device_name = runs["lab10_5"].get("device_name", args.device)
    print(f"\n{'figure':<28}{'measured':>10}{'target':>9}  on {device_name}" + ("  (--quick: not a figure)"
          if args.quick else ""))  # fmt: skip
    for name, (value, target) in figures.items():
        print(f"{name:<28}{value:>10.2f}{'<= ' + str(target):>9}  {'met' if value <= target else 'NOT met'}")
    peers = [sys.executable, str(HERE / "peers.py"), "--data", args.data, "--rounds", "1", "--device", args.device,
             "--tools", "dlzoo,lightning,keras_torch,dataloader", "--out", str(Path(args.out).with_name(
                 "gpu_peers.json"))] + (["--limit", "60"] if args.quick else [])  # fmt: skip
    print("\npeers on the same device (scripts/peers.py, one round):", flush=True)
    subprocess.run(peers, check=False)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": device_name, "quick": args.quick, "times": times,
                                          "figures": {k: {"value": v, "target": t} for k, (v, t) in figures.items()},
                                          "runs": runs}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
