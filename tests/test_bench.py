"""The benchmark script's smoke check (`--quick`): it runs all three pipelines for both lecture nets on real data
and writes the JSON the README's speed table is made from. A figure check, never: the numbers come from full runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
    assert set(rows) == {"mlp_dropout", "cnn_deep"}
    for r in rows.values():
        for key in ("per_sample_samples_per_s", "dlzoo_samples_per_s", "compute_only_samples_per_s"):
            assert r[key] > 0, key
        assert r["dlzoo_over_per_sample"] == r["dlzoo_samples_per_s"] / r["per_sample_samples_per_s"]
        assert r["eval_samples_per_s"] > r["dlzoo_samples_per_s"]  # evaluation runs in 10k batches, no backward
    assert "mlp_dropout" in proc.stdout and "dlzoo/compute" in proc.stdout
