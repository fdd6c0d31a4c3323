"""The benchmark script's smoke check (`--quick`): it runs all three pipelines for both lecture nets on real data
and writes the JSON the README's speed table is made from. A figure check, never: the numbers come from full runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_bench_quick_writes_every_ratio(fmnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--threads", "1"]
    proc = subprocess.run(
        [*cmd, "--data", str(fmnist_root), "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["env"]["threads"] == 1 and report["env"]["torch"] and report["env"]["peak_rss_mb"] > 0
    rows = {r["model"]: r for r in report["results"]}
    assert all(r["compile"] is False and r["precision"] == "fp32" for r in rows.values())
    assert set(rows) == {"mlp_dropout", "cnn_deep"}
    for r in rows.values():
        for key in ("per_sample_samples_per_s", "dlzoo_samples_per_s", "compute_only_samples_per_s"):
            assert r[key] > 0, key
        assert r["dlzoo_over_per_sample"] == r["dlzoo_samples_per_s"] / r["per_sample_samples_per_s"]
        assert r["eval_samples_per_s"] > 0  # a figure, never compared here: timings under load prove nothing
    assert "mlp_dropout" in proc.stdout and "dlzoo/compute" in proc.stdout


def test_the_baseline_net_is_stock_torch_with_the_same_weights() -> None:
    # (a) must be what a tutorial runs: nn.Dropout (torch's bernoulli_ mask), not dlzoo's cheaper CPU mask.
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from bench import as_users_write_it
    finally:
        sys.path.remove(str(REPO / "scripts"))
    import torch
    from torch import nn

    from dlzoo.models.mlp import MLP
    from dlzoo.models.norm_dropout import Dropout

    model = MLP(784, 10, [32, 32], dropout=0.3)
    stock = as_users_write_it(model)
    assert sum(type(m) is Dropout for m in model.modules()) == 2
    assert not any(isinstance(m, Dropout) for m in stock.modules())
    assert [m.p for m in stock.modules() if type(m) is nn.Dropout] == [0.3, 0.3]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), stock.parameters(), strict=True))
    assert all(p is not q for p, q in zip(model.parameters(), stock.parameters(), strict=True))


def test_bench_peers_runs_each_tool_in_its_own_process_and_writes_the_table(mnist_root: Path, tmp_path: Path) -> None:
    """`--peers` on a cut epoch: the dlzoo and DataLoader workers (always installed), and an uninstalled peer is
    reported as not run instead of failing the table."""
    out = tmp_path / "peers.json"
    cmd = [sys.executable, str(REPO / "scripts" / "bench.py"), "--peers", "--data", str(mnist_root.parent),
           "--tools", "dlzoo,dataloader,keras_tensorflow", "--tf-python", sys.executable, "--rounds", "1",
           "--threads", "1", "--warmup", "10", "--limit", "30", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    table = report["table"]
    assert set(table) == {"dlzoo", "dataloader"} and report["threads"] == 1
    for tool, row in table.items():
        run = report["runs"][tool][0]
        assert run["steps"] == 30 and 0 < run["first_step_s"] < run["warm_s"] < run["last_s"], tool
        assert row["median"] == run["samples_per_s"] == 20 * 100 / (run["last_s"] - run["warm_s"])
    assert table["dlzoo"]["dlzoo_over_tool"] == 1.0
    assert table["dataloader"]["dlzoo_over_tool"] == table["dlzoo"]["median"] / table["dataloader"]["median"]
    assert "keras_tensorflow" in report["skipped"] and "not run" in proc.stdout


def test_bench_stack_times_both_ways_and_writes_the_ratio(mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "stack.json"
    cmd = [sys.executable, str(REPO / "scripts" / "bench.py"), "--stack", "2", "--data", str(mnist_root.parent),
           "--steps", "3", "--repeats", "1", "--threads", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    a, b = report["times"]["one_after_another"][0], report["times"]["stacked"][0]
    assert report["stack"] == 2 and a > 0 and b > 0 and report["ratios"] == [a / b]
    assert "stacked speed-up" in proc.stdout
    # One arm alone, as two versions are compared in alternating processes: its step times, no ratio.
    proc = subprocess.run([*cmd, "--arm", "stacked"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert set(report["times"]) == {"stacked"} and report["ratios"] == []
    assert len(report["rows"]["stacked"]["ms_per_step"]) == 1 and "stacked speed-up" not in proc.stdout


@pytest.mark.slow
def test_the_prepared_gpu_script_runs_end_to_end_on_the_cpu(mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(REPO / "scripts" / "gpu_figures.py"), "--data", str(mnist_root.parent), "--device",
           "cpu", "--quick", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert set(report["figures"]) == {"lab10_5_train_s", "lab11_2_train_s", "stack5_over_one_seed",
                                      "ensemble_over_one_member"} and report["quick"]  # fmt: skip
    assert all(t > 0 for t in report["times"].values()) and "peers on the same device" in proc.stdout
