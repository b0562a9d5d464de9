"""A sweep's worker processes end with it: when it is interrupted, and when it is killed
outright (kill -9), with no process and no temporary file left behind.

Linux only: the test of a killed sweep reads the process table in /proc.
"""

import multiprocessing
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prenorm import sweeps

TINY = dict(d_model=16, n_heads=2, seq_len=8, n_layers=1)

# A script that runs a sweep whose one run never finishes: its probe sleeps at step 0.
KILLED_SWEEP = """
import os
import time

import prenorm as P


def sleeping(model, batch):
    print("running in", os.getpid(), flush=True)
    time.sleep(120)
    raise AssertionError("this worker should have ended with its sweep")


if __name__ == "__main__":
    P.sweep(
        P.load_corpus(),
        {"seed": [0]},
        model_kwargs=dict(d_model=16, n_heads=2, seq_len=8, n_layers=1),
        train_kwargs=dict(steps=2, batch_size=2, lr=1e-3, device="cpu"),
        probes=[sleeping],
        probe_at=[0],
        backend="processes",
        workers=1,
        progress=False,
    )
"""


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # it exited meanwhile
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` is still running: it exists and is not a zombie (a process that has
    exited and waits for whoever adopted it to collect its exit status)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_killed_sweep_leaves_no_process_and_no_file(tmp_path):
    # Fails if a worker, or multiprocessing's resource tracker, is still running 20 s after
    # its sweep was killed with kill -9 (a worker blocked in its run or on its queue, as a
    # ProcessPoolExecutor's are), or if a file is left in the sweep's temporary directory
    # (the corpus pickled to a temporary file for the workers to read).
    script = tmp_path / "killed_sweep.py"
    script.write_text(KILLED_SWEEP)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stderr = tmp_path / "stderr.txt"
    children: list[int] = []
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=err,
            # torch keeps its compile cache (an empty directory until something compiles)
            # under TMPDIR unless told otherwise; it is torch's, meant to persist, and made
            # by any training, serial too. Elsewhere, TMPDIR holds only what the sweep left.
            env={**os.environ, "TMPDIR": str(tmp), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)},
            text=True,
        )
    try:
        # Wait (90 s at most: the script and its worker each import torch) for the run.
        readable, _, _ = select.select([proc.stdout], [], [], 90)
        line = proc.stdout.readline() if readable else ""
        assert line.startswith("running in"), f"no run started: {line!r} {stderr.read_text()}"
        worker = int(line.split()[-1])
        children = _children(proc.pid)
        assert worker in children, (worker, children)
        assert len(children) >= 2  # the worker and the resource tracker
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while any(map(_running, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {pid: _command(pid) for pid in children if _running(pid)}
        assert not left, f"still running after their sweep was killed: {left}"
        assert sorted(p.name for p in tmp.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        for pid in children:  # what this test started, should the test have failed
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_an_interrupted_sweep_stops_its_workers_at_once(corpus):
    # Fails if closing the backend's generator (what an interrupt or an exception in the
    # caller does) waits for the run still running (about a minute of training here) or
    # leaves its worker running.
    points = [{"steps": 2}, {"steps": 100_000}]
    model_kwargs = {**TINY, "vocab_size": corpus.vocab_size}
    train_kwargs = dict(batch_size=2, lr=1e-3, device="cpu")
    jobs = sweeps._jobs(points, model_kwargs, train_kwargs, history=False)
    before = set(multiprocessing.active_children())
    runs = sweeps._processes(corpus, jobs, 1)
    index, outcome = next(runs)  # the short run; the long one starts now
    assert index == 0 and "summary" in outcome
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 1
    start = time.monotonic()
    runs.close()
    assert time.monotonic() - start < 5
    assert [w.exitcode for w in workers] == [-signal.SIGTERM]  # terminated, not finished
