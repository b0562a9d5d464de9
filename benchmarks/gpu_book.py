"""Every chapter at the ``gpu`` preset on a CUDA machine, plus the chapter 7 benchmark:
each chapter's wall time and peak GPU memory, in one run sized for < 8 min on an H100.

Each chapter is executed in a fresh kernel of this environment (as the book build
does), with ``PRENORM_SCALE`` set to the preset. After its last cell a probe cell reads,
in the same kernel, the device's name, ``torch.cuda.max_memory_allocated`` (peak memory
of the chapter's tensors: its sweeps train in the kernel's own process on a GPU) and the
process's peak RSS; a sampler of ``nvidia-smi`` records the device's peak memory in use
besides (CUDA context and allocator cache included). The chapter 7 benchmark
(``benchmarks/norm_speed.py``, if present) runs first, under its own timeout.

The whole run has a time budget: a chapter gets what is left of it (less the share held
back for the chapters after it), and one that runs out is recorded as ``timeout``, so
one short run always returns every figure it could measure. Results go to
``OUT/gpu_book.json`` and a Markdown table to ``OUT/gpu_book.md`` (and stdout), ready for
book/gpu.md.

    python benchmarks/gpu_book.py                      # CUDA, gpu preset, 470 s budget
    python benchmarks/gpu_book.py --preset ci --device cpu --chapters 02_layernorm_jacobian
        # the dry mode: the same code path on a CPU (tests/test_gpu_book.py runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """\
import json, resource, torch
_cuda = torch.cuda.is_available()
print("GPU_BOOK_PROBE " + json.dumps({
    "device": torch.cuda.get_device_name() if _cuda else "cpu",
    "peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if _cuda else None,
    "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20 if _cuda else None,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


class GpuMemorySampler:
    """Peak ``memory.used`` of GPU 0 as nvidia-smi reports it, sampled every 0.5 s (None
    without nvidia-smi)."""

    def __init__(self) -> None:
        self.exe = shutil.which("nvidia-smi")
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(
                    [self.exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True, text=True, timeout=5,
                ).stdout  # fmt: skip
                used = float(out.split()[0])
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                continue
            self.peak = used if self.peak is None else max(self.peak, used)

    def __enter__(self) -> GpuMemorySampler:
        if self.exe:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.exe:
            self._thread.join(timeout=10)


def chapters(names: list[str] | None) -> list[Path]:
    """The chapters named (stems), or every ``book/NN_*.ipynb`` in order."""
    if names:
        return [ROOT / "book" / f"{n.removesuffix('.ipynb')}.ipynb" for n in names]
    return sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def run_chapter(path: Path, env: dict[str, str], timeout: float, workdir: Path) -> dict:
    """Execute one chapter in a fresh kernel; its time, peak memory and outcome."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    row: dict[str, object] = {"chapter": path.stem}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    t0 = time.perf_counter()
    try:
        with GpuMemorySampler() as smi:
            client = NotebookClient(
                nb,
                timeout=None,
                kernel_name="python3",
                resources={"metadata": {"path": str(workdir)}},
            )
            done = threading.Event()
            result: dict[str, BaseException] = {}

            def execute() -> None:
                try:
                    client.execute()
                except BaseException as exc:  # noqa: BLE001 - reported below
                    result["error"] = exc
                finally:
                    done.set()

            threading.Thread(target=execute, daemon=True).start()
            if not done.wait(timeout):
                row["status"] = "timeout"
                if client.km is not None:
                    client.km.shutdown_kernel(now=True)
                done.wait(30)
            elif "error" in result:
                exc = result["error"]
                kind = (CellExecutionError, CellTimeoutError, DeadKernelError)
                row["status"] = "error"
                row["error"] = (str(exc) if isinstance(exc, kind) else repr(exc))[-800:]
            else:
                row["status"] = "ok"
        row["device_peak_used_mb"] = smi.peak
    finally:
        row["seconds"] = round(time.perf_counter() - t0, 1)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if row["status"] == "ok":
        for out in nb.cells[-1].get("outputs", []):
            for line in out.get("text", "").splitlines():
                if line.startswith("GPU_BOOK_PROBE "):
                    row.update(json.loads(line.split(" ", 1)[1]))
    return row


def run_benchmark(cmd: list[str], timeout: float, env: dict[str, str]) -> dict:
    """Run the chapter 7 benchmark command; its time and the tail of its output."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        output = (proc.stdout + proc.stderr)[-4000:]
    except subprocess.TimeoutExpired as exc:
        status, output = "timeout", str(exc.stdout or "")[-4000:]
    return {
        "command": shlex.join(cmd),
        "status": status,
        "seconds": round(time.perf_counter() - t0, 1),
        "output": output,
    }


def _mb(x: object) -> str:
    return "" if x is None else f"{float(x):,.0f}"


def table(rows: list[dict], device: str, preset: str) -> str:
    """The chapters' figures as a Markdown table."""
    lines = [
        f"Device: {device}; preset `{preset}`.",
        "",
        "| chapter | status | time (s) | peak allocated (MiB) | peak in use, nvidia-smi (MiB) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['chapter']} | {r['status']} | {r['seconds']} | "
            f"{_mb(r.get('peak_allocated_mb'))} | {_mb(r.get('device_peak_used_mb'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpu", choices=["ci", "cpu", "gpu"])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--chapters", nargs="*", help="chapter stems (default: every chapter)")
    ap.add_argument("--budget", type=float, default=470.0, help="seconds for the whole run")
    ap.add_argument(
        "--reserve", type=float, default=30.0, help="seconds held back per chapter still to run"
    )
    ap.add_argument("--benchmark-timeout", type=float, default=90.0)
    ap.add_argument(
        "--benchmark",
        default=f"{shlex.quote(sys.executable)} benchmarks/norm_speed.py --dtype bfloat16 --repeats 10",
        help="the chapter 7 benchmark command ('' to skip; skipped when the script is absent)",
    )
    ap.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the results"
    )
    args = ap.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "no CUDA device here; for a dry run on the CPU: --preset ci --device cpu",
            file=sys.stderr,
        )
        return 2
    env = {"PRENORM_SCALE": args.preset, "PYTHONUNBUFFERED": "1"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the chapters pick the device themselves: hide CUDA
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "work"  # the chapters' _results/ ledgers land here, not in the checkout
    workdir.mkdir(exist_ok=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    start = time.perf_counter()
    report: dict[str, object] = {
        "device": device,
        "preset": args.preset,
        "torch": torch.__version__,
    }

    bench = shlex.split(args.benchmark)
    script = next((a for a in bench if a.endswith(".py")), None)
    if bench and (script is None or (ROOT / script).exists()):
        report["benchmark"] = run_benchmark(bench, args.benchmark_timeout, env)
        print(
            f"benchmark: {report['benchmark']['status']} in {report['benchmark']['seconds']} s",
            flush=True,
        )
    else:
        report["benchmark"] = {"status": "skipped", "command": args.benchmark}

    rows = []
    paths = chapters(args.chapters)
    for i, path in enumerate(paths):
        left = args.budget - (time.perf_counter() - start) - args.reserve * (len(paths) - i - 1)
        if left <= 5:
            rows.append({"chapter": path.stem, "status": "not run (budget)", "seconds": 0})
            continue
        row = run_chapter(path, env, left, workdir)
        rows.append(row)
        print(
            f"{row['chapter']}: {row['status']} in {row['seconds']} s, peak {_mb(row.get('peak_allocated_mb'))} MiB",
            flush=True,
        )
    report["chapters"] = rows
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    (out / "gpu_book.json").write_text(json.dumps(report, indent=2))
    md = table(rows, device, args.preset)
    (out / "gpu_book.md").write_text(md)
    print(md)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
