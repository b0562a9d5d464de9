"""benchmarks/gpu_book.py, the CUDA machine's one script, in its dry mode on the CPU:
the same chapter runner, probe, budget and report, at the `ci` preset."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_book.py"


def _run(tmp_path, *args, timeout=900):
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_dry_run_on_cpu_records_time_and_memory(tmp_path):
    bench = shlex.join([sys.executable, "-c", "print('norm-speed-stand-in')"])
    proc = _run(
        tmp_path, "--preset", "ci", "--device", "cpu", "--chapters", "02_layernorm_jacobian",
        "--benchmark", bench,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_book.json").read_text())
    assert report["device"] == "cpu" and report["preset"] == "ci"
    assert report["benchmark"]["status"] == "ok"
    assert "norm-speed-stand-in" in report["benchmark"]["output"]
    (row,) = report["chapters"]
    assert row["status"] == "ok" and row["chapter"] == "02_layernorm_jacobian"
    assert row["device"] == "cpu" and row["peak_allocated_mb"] is None  # no CUDA in the kernel
    assert row["peak_rss_mb"] > 50 and 0 < row["seconds"] < 900
    md = (tmp_path / "gpu_book.md").read_text()
    assert "| 02_layernorm_jacobian | ok |" in md and md in proc.stdout


def test_budget_spent_marks_chapters_not_run(tmp_path):
    proc = _run(tmp_path, "--preset", "ci", "--device", "cpu", "--budget", "1", "--benchmark", "")
    assert proc.returncode == 1
    report = json.loads((tmp_path / "gpu_book.json").read_text())
    assert report["chapters"] and {r["status"] for r in report["chapters"]} == {"not run (budget)"}
    assert report["benchmark"]["status"] == "skipped"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_mode_refuses_without_cuda(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 2 and "--preset ci --device cpu" in proc.stderr
