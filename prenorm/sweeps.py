"""Grids of experiments: every point of a Cartesian product, on a freshly seeded model.

:func:`sweep` trains one model per grid point; :func:`probe_sweep` runs a probe on
one. Both expand the grid and build each point's model the same way
(:func:`grid_points`, :func:`point_model`), so a grid point means the same model
in both.

A sweep's runs are independent, so :func:`sweep` can spread them over worker
processes on this machine or over a Ray cluster (:data:`BACKENDS`), and can keep
finished runs in a cache file so that an interrupted sweep resumes where it
stopped. Every run, wherever it runs, is trained with one intra-op thread, so its
numbers do not depend on the backend.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import itertools
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import pickle
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .blocks import PLACEMENTS
from .data import Corpus
from .devices import device as default_device
from .model import INITS, TransformerLM, build_model
from .norms import NORMS
from .probes import Batch
from .registry import Registry
from .training import OPTIMIZERS, SCHEDULES, train

#: Grid keys that configure the model: the arguments of :class:`~prenorm.TransformerLM`.
MODEL_KEYS = tuple(k for k in inspect.signature(TransformerLM.__init__).parameters if k != "self")
#: Grid keys that configure training: the arguments of :func:`~prenorm.train`.
TRAIN_KEYS = tuple(
    k for k in inspect.signature(train).parameters if k not in ("model", "data", "seed")
)
#: Keys whose values are names in a registry; checked before a sweep starts.
_NAMED: dict[str, Registry[Any]] = {
    "placement": PLACEMENTS,
    "norm": NORMS,
    "init": INITS,
    "schedule": SCHEDULES,
    "optimizer": OPTIMIZERS,
}

# One run of a sweep, as sent to a worker: {"model": TransformerLM kwargs, "train": train
# kwargs, "seed": int, "history": bool}. Its outcome, as returned and cached, is plain JSON:
# {"summary": TrainResult.summary(), "history": {column: values} or None} for a run that
# finished (diverged or not), {"error": "Type: message"} for one that raised.
Job = dict[str, Any]
Outcome = dict[str, Any]


Grid = Mapping[str, Sequence[object]]


def grid_points(grid: Grid | Sequence[Grid], valid: Sequence[str]) -> list[dict[str, object]]:
    """Every point of the Cartesian product of ``grid`` (name -> non-empty list of
    values), in order, as dicts. Names must be in ``valid`` or be ``"seed"``, whose
    values must be integers; anything else raises ``ValueError``. A list of grids gives
    the points of each in turn (a union of products, for designs that differ in which
    arguments they take)."""
    if not isinstance(grid, Mapping):
        if isinstance(grid, str | bytes) or not all(isinstance(g, Mapping) for g in grid):
            raise ValueError(f"grid must be a mapping or a list of mappings, got {grid!r}")
        return [p for g in grid for p in grid_points(g, valid)]
    allowed = set(valid) | {"seed"}
    unknown = sorted(set(grid) - allowed)
    if unknown:
        raise ValueError(f"unknown sweep keys {unknown}; valid keys are {sorted(allowed)}")
    for key, values in grid.items():
        _check_values(key, values)
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def _check_values(key: str, values: object) -> None:
    """A grid's values for ``key`` are a non-empty list (a tuple, a range or a 1-D numpy
    array will do); seeds are integers. A bare value would otherwise be iterated: the
    string ``"pre"`` as the placements ``"p"``, ``"r"``, ``"e"``."""
    is_list = isinstance(values, list | tuple | range) or (
        isinstance(values, np.ndarray) and values.ndim == 1
    )
    if not is_list:
        raise ValueError(
            f"grid values must be a list (or tuple) of values, got {key!r}: {values!r}; "
            f"e.g. {{{key!r}: [{values!r}]}} for that one value"
        )
    if len(values) == 0:
        raise ValueError(f"grid values for {key!r} are empty: give at least one value")
    if key == "seed":
        for seed in values:
            if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
                raise ValueError(
                    f"seeds must be integers (int or a numpy integer), got {seed!r} "
                    f"({type(seed).__name__}) in the grid's seeds {values!r}"
                )


def _model_kwargs(point: Mapping[str, object], model_kwargs: Mapping[str, object]) -> dict:
    return {**model_kwargs, **{k: v for k, v in point.items() if k in MODEL_KEYS}}


def point_model(
    point: Mapping[str, object],
    model_kwargs: Mapping[str, object],
    device: torch.device | str | None = None,
) -> TransformerLM:
    """The model of one grid point: ``model_kwargs`` overridden by the point's model
    keys, initialized under ``torch.manual_seed(point["seed"])`` (default 0)."""
    return build_model(
        seed=int(point.get("seed", 0)), device=device, **_model_kwargs(point, model_kwargs)
    )


def probe_sweep(
    probe: Callable[..., pd.DataFrame],
    batch: Batch | Callable[[int], Batch],
    grid: Mapping[str, Sequence[object]],
    model_kwargs: Mapping[str, object],
    device: torch.device | str | None = None,
    **probe_kwargs: object,
) -> pd.DataFrame:
    """Run ``probe(model, batch, **probe_kwargs)`` on a fresh model for every point
    of the Cartesian product of ``grid`` and concatenate the frames.

    ``grid`` keys are :class:`~prenorm.TransformerLM` arguments (``placement``,
    ``init``, ``n_layers``, ...) or ``seed`` (integers; seeds the initialization;
    default 0), each with a non-empty list of values, as in :func:`sweep`. ``batch``
    is a fixed batch or a function ``seed -> batch``. Every row gets the grid point's
    values as columns.
    """
    frames = []
    for point in grid_points(grid, MODEL_KEYS):
        model = point_model(point, model_kwargs, device)
        b = batch(int(point.get("seed", 0))) if callable(batch) else batch
        frames.append(probe(model, b, **probe_kwargs).assign(**point))
    return pd.concat(frames, ignore_index=True)


# ---- one run, wherever it runs ----------------------------------------------------------
def _run_job(data: Corpus, job: Job) -> Outcome:
    """Build and train the model of ``job``; an exception becomes ``{"error": ...}``."""
    try:
        model = build_model(seed=job["seed"], **job["model"])
        spec = job.get("probes")
        found: list[dict[str, object]] = []
        callback = _probe_callback(data, model, spec, found) if spec else None
        result = train(model, data, seed=job["seed"], callback=callback, **job["train"])
    except Exception as exc:  # a run that raises is a row, never the end of the sweep
        return {"error": _describe(exc)}
    hist = result.history.to_dict(orient="list") if job["history"] else None
    out: Outcome = {"summary": result.summary(), "history": hist}
    if spec:
        out["probes"] = found
    return out


def _probe_ref(fn: Callable[..., pd.DataFrame]) -> str:
    """``module:qualname`` of a probe: how a job names it, so that it travels to a worker
    and into a cache key as text. Refuses what cannot be found again by that name."""
    ref = f"{getattr(fn, '__module__', None)}:{getattr(fn, '__qualname__', None)}"
    try:
        found = _resolve_probe(ref)
    except (ImportError, AttributeError, ValueError):
        found = None
    if found is not fn:
        raise ValueError(
            f"probes must be module-level functions (a worker imports them by name), got "
            f"{fn!r}; e.g. prenorm.residual_norms or a function defined in an importable module"
        )
    return ref


def _resolve_probe(ref: str) -> Callable[..., pd.DataFrame]:
    import importlib

    module, _, name = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _probe_callback(
    data: Corpus, model: TransformerLM, spec: dict[str, Any], found: list[dict[str, object]]
) -> Callable[[int, TransformerLM], None]:
    """A :func:`~prenorm.train` callback that runs every probe of ``spec`` on one fixed
    validation batch at the steps ``spec["at"]``, appending its rows (with ``step`` and
    ``probe``) to ``found``."""
    gen = torch.Generator().manual_seed(spec["seed"])
    dev = next(model.parameters()).device
    batch = data.batch("val", spec["batch_size"], model.seq_len, gen, device=dev)
    fns = {ref: _resolve_probe(ref) for ref in spec["fns"]}
    when = {ref: set(spec.get("when", {}).get(ref, spec["at"])) for ref in spec["fns"]}

    def callback(step: int, m: TransformerLM) -> None:
        for ref, fn in fns.items():
            if step in when[ref]:
                rows = fn(m, batch).to_dict(orient="records")
                name = ref.rpartition(":")[2]
                found.extend({**row, "step": step, "probe": name} for row in rows)

    return callback


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _plain(outcome: Outcome) -> Outcome:
    """The outcome as it reads back from JSON, so fresh and cached rows are identical."""
    return json.loads(json.dumps(outcome, default=_jsonable))


def _jsonable(value: object) -> object:
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    return repr(value)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Train with one intra-op thread (so the float summation order, and with it every
    number, does not depend on where a run happens), denormals flushed; restore the
    caller's thread count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---- backends: each yields (index into jobs, outcome) as runs finish ----------------------
def _serial(data: Corpus, jobs: list[Job], workers: int | None) -> Iterator[tuple[int, Outcome]]:
    with _one_thread():
        for i, job in enumerate(jobs):
            yield i, _run_job(data, job)


# ---- the "processes" backend: a small pool of spawned worker processes -----------------
#
# Each worker is a fresh Python interpreter (spawned, not forked: forking a process that
# has started threads, as torch does, can deadlock) joined to this one by a duplex pipe.
# Every message on the pipe is a plain pickle (not multiprocessing's, with which torch
# would move tensors to shared memory, files that a killed sweep would leave behind):
#
#   worker -> parent   "ready", once it has imported prenorm and torch
#   parent -> worker   the corpus, once; then one run at a time
#   worker -> parent   the outcome of that run
#
# The parent closes the pipe to stop a worker. A worker that dies costs the run it was
# running and nothing else: that run's row says so, a new worker takes its place, and
# the other workers go on. A worker ends itself when the parent is gone (killed, even
# with kill -9), so that no process outlives its sweep; nothing is written to disk.


def _worker_main(conn: Connection) -> None:
    """A worker's life: say ready, receive the corpus, then run jobs until the pipe closes."""
    _exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops us
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        conn.send_bytes(pickle.dumps("ready"))
        data = pickle.loads(conn.recv_bytes())
        while True:
            conn.send_bytes(_outcome_bytes(data, conn.recv_bytes()))
    except (EOFError, OSError):  # the parent closed the pipe, or is gone
        return


def _outcome_bytes(data: Corpus, job: bytes) -> bytes:
    """Unpickle a job, run it, pickle its outcome. A job or an outcome that does not
    (un)pickle is an error outcome like any other (``_run_job`` catches the rest)."""
    try:
        return pickle.dumps(_run_job(data, pickle.loads(job)))
    except Exception as exc:
        return pickle.dumps({"error": _describe(exc)})


def _exit_with_parent() -> None:
    """Start a thread that ends this (worker) process as soon as its parent is gone, even
    in the middle of a run. The parent's sentinel becomes readable when the parent exits,
    however it exits, because the kernel closes the parent's end of a pipe then."""
    parent = multiprocessing.parent_process()
    assert parent is not None, "not a child process"

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


@dataclasses.dataclass
class _Worker:
    """One worker process, the parent's end of its pipe, and the run it is running
    (``None`` while it starts up)."""

    process: multiprocessing.process.BaseProcess
    conn: Connection
    run: int | None = None

    @classmethod
    def start(cls) -> _Worker:
        ctx = multiprocessing.get_context("spawn")
        conn, child_conn = ctx.Pipe(duplex=True)
        process = ctx.Process(target=_worker_main, args=(child_conn,), name="prenorm-sweep")
        process.start()
        child_conn.close()  # the worker has its own copy; ours would hide its death
        return cls(process, conn)

    def send(self, payload: bytes) -> None:
        """Send one message. A worker that has died meanwhile is not an error here: the
        next wait sees its sentinel, and its run is reported then."""
        with contextlib.suppress(OSError):
            self.conn.send_bytes(payload)

    def how_it_died(self) -> str:
        self.process.join(timeout=5)  # it is dead or dying: this collects its exit code
        code = self.process.exitcode
        if code is None:
            return "exit status unknown"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exit code {code}"

    def stop(self, now: bool) -> None:
        """Close the pipe (an idle worker then exits by itself); with ``now``, also
        terminate it at once, running or not. Then wait for it, but not for long."""
        self.conn.close()
        if now:
            self.process.terminate()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)


_DIED = (
    "WorkerDied: the worker process running this run died ({how}): out of memory, a crash "
    "in native code, or a call to os._exit; the other runs were not affected"
)
_NO_WORKER = (
    "WorkerDied: no worker process could start ({how}); a script that calls sweep() must"
    " do so under `if __name__ == '__main__':`, which every spawned worker re-runs"
)


def _processes(data: Corpus, jobs: list[Job], workers: int | None) -> Iterator[tuple[int, Outcome]]:
    corpus = pickle.dumps(data)  # once, for every worker
    todo: collections.deque[tuple[int, bytes]] = collections.deque()
    for i, job in enumerate(jobs):
        try:
            todo.append((i, pickle.dumps(job)))
        except Exception as exc:  # e.g. a lambda as a grid value: it cannot travel
            yield i, {"error": _describe(exc) + " (a run travels to its worker as a pickle)"}
    pool = [_Worker.start() for _ in range(min(workers or 1, len(todo)))]
    gone: list[_Worker] = []  # stopped or dead, to be reaped at the end
    try:
        while todo or any(w.run is not None for w in pool):
            if not pool:  # every worker died while it started up
                how = gone[-1].how_it_died()
                for i, _ in todo:
                    yield i, {"error": _NO_WORKER.format(how=how)}
                break
            ready = multiprocessing.connection.wait(
                [w.conn for w in pool] + [w.process.sentinel for w in pool]
            )
            for w in [w for w in pool if w.conn in ready or w.process.sentinel in ready]:
                try:
                    message = pickle.loads(w.conn.recv_bytes())
                except (EOFError, OSError):  # the worker died
                    pool.remove(w)
                    gone.append(w)
                    if w.run is not None:  # it dies with its run: start another for the rest
                        if todo:
                            pool.append(_Worker.start())
                        yield w.run, {"error": _DIED.format(how=w.how_it_died())}
                    continue
                if w.run is None:  # "ready": it has started up
                    w.send(corpus)
                else:
                    yield w.run, message
                if todo:  # its next run
                    w.run, job = todo.popleft()
                    w.send(job)
                else:
                    w.run = None
                    w.conn.close()  # nothing left for it: it exits
                    pool.remove(w)
                    gone.append(w)
    finally:
        # The workers still in the pool are running a run (the caller was interrupted) or
        # still starting up: end them at once, waiting for neither. The others are idle
        # (told to exit) or dead.
        for w in pool:
            w.stop(now=True)
        for w in gone:
            w.stop(now=False)


def _ray_task(data: Corpus, job: Job) -> Outcome:
    with _one_thread():
        return _run_job(data, job)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            'backend "ray" needs Ray, which is not installed: pip install "prenorm[ray]"'
        ) from exc
    return ray


def _ray(data: Corpus, jobs: list[Job], workers: int | None) -> Iterator[tuple[int, Outcome]]:
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init()  # a local instance, or the cluster that $RAY_ADDRESS names
    gpus = ray.cluster_resources().get("GPU", 0) >= 1
    task = ray.remote(_ray_task)
    data_ref = ray.put(data)

    def submit(i: int) -> Any:
        job = jobs[i]
        on_gpu = gpus and torch.device(job["train"].get("device") or "cuda").type == "cuda"
        return task.options(**({"num_gpus": 1} if on_gpu else {"num_cpus": 1})).remote(
            data_ref, job
        )

    queue = list(range(len(jobs)))
    limit = workers or len(jobs)
    pending = {submit(i): i for i in queue[:limit]}
    queue = queue[limit:]
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as exc:  # a worker died, or the task could not run
                outcome = {"error": _describe(exc)}
            if queue:
                j = queue.pop(0)
                pending[submit(j)] = j
            yield i, outcome
    finally:
        for ref in pending:
            ray.cancel(ref)


#: Where :func:`sweep` runs its grid points: ``"serial"`` (one after another in this
#: process), ``"processes"`` (``workers`` spawned processes on this machine) and
#: ``"ray"`` (one Ray task per point on the current Ray instance).
BACKENDS: Registry[Callable[[Corpus, list[Job], int | None], Iterator[tuple[int, Outcome]]]] = (
    Registry("backend", {"serial": _serial, "processes": _processes, "ray": _ray})
)


# ---- the cache: one JSON line per finished run ------------------------------------------
def _key(job: Job, corpus: str) -> str:
    config = {**job, "corpus": corpus}
    return hashlib.sha256(
        json.dumps(config, sort_keys=True, default=_jsonable).encode()
    ).hexdigest()


def _corpus_id(data: Corpus) -> str:
    digest = hashlib.sha256(data.text.encode()).hexdigest()[:16]
    return f"{data.name}:{digest}:{data.val_fraction}"


@functools.cache
def _source_hash() -> str:
    """SHA-256 of the package's source: the name and bytes of every ``prenorm/*.py``, in
    sorted order. Computed once per process. A cache entry records it, so that a code
    change without a version bump (an editable install) does not reuse stale numbers."""
    digest = hashlib.sha256()
    for file in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def _read_cache(path: Path, version: str, source: str) -> dict[str, Outcome]:
    """The outcomes in the cache at ``path`` written by this ``version`` of the package,
    with this ``source`` hash, by key. Lines that do not decode (UTF-8) or parse (a write
    cut off by a kill) are skipped; entries of other versions or other source are ignored;
    either with a warning, so those runs are trained again."""
    found: dict[str, Outcome] = {}
    other: dict[str, int] = {}
    changed = unreadable = 0
    if not path.exists():
        return found
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))  # UnicodeDecodeError is a ValueError
            key, outcome, written_by = record["key"], record["outcome"], record["prenorm"]
        except (ValueError, KeyError, TypeError):
            unreadable += 1
            continue
        if written_by != version:
            other[str(written_by)] = other.get(str(written_by), 0) + 1
        elif record.get("source") != source:
            changed += 1
        else:
            found[key] = outcome
    if other:
        versions = ", ".join(f"{n} by prenorm {v}" for v, n in sorted(other.items()))
        warnings.warn(
            f"sweep cache {path}: ignoring runs written by another package version "
            f"({versions}; this is prenorm {version}); they will be trained again",
            stacklevel=3,
        )
    if changed:
        warnings.warn(
            f"sweep cache {path}: ignoring {changed} run(s) written by prenorm {version} "
            f"with other source code (a code change without a version bump; this source "
            f"hash is {source[:12]}); they will be trained again",
            stacklevel=3,
        )
    if unreadable:
        warnings.warn(
            f"sweep cache {path}: skipped {unreadable} unreadable line(s), e.g. a write cut "
            "off by an interrupt or bytes that are not UTF-8; those runs will be trained again",
            stacklevel=3,
        )
    return found


def _append(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one JSON line and sync it to disk. A line cut off by a kill
    is terminated first, so it costs only itself."""
    line = json.dumps(record, default=_jsonable) + "\n"
    with path.open("a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())


# ---- the sweep ------------------------------------------------------------------------
def _default_workers(jobs: list[Job]) -> int:
    """One process when the runs train on an accelerator (one GPU), else one per usable
    core; never more than the number of runs."""
    on_cpu = all(
        torch.device(job["train"].get("device") or default_device()).type == "cpu" for job in jobs
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(len(jobs), cores or 1)) if on_cpu else 1


def _check_kwargs(kind: str, kwargs: Mapping[str, object], valid: Sequence[str]) -> None:
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown {kind} keys {unknown}; valid keys are {sorted(valid)}")


def _required(fn: Callable[..., object], skip: tuple[str, ...]) -> tuple[str, ...]:
    """The arguments of ``fn`` that have no default."""
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if p.default is p.empty and p.name not in skip)


#: What every run must be given, by the fixed kwargs or by the grid.
_REQUIRED = {
    "model": _required(TransformerLM.__init__, ("self",)),
    "train": _required(train, ("model", "data", "seed")),
}


def _check_complete(jobs: list[Job]) -> None:
    """Every run is given the arguments that :class:`~prenorm.TransformerLM` and
    :func:`~prenorm.train` require."""
    for part, required in _REQUIRED.items():
        for job in jobs:
            missing = [k for k in required if k not in job[part]]
            if missing:
                raise ValueError(
                    f"missing {part} arguments {missing}: give them in {part}_kwargs or the grid"
                )


def _jobs(
    points: list[dict[str, object]],
    model_kwargs: dict[str, object],
    train_kwargs: dict[str, object],
    history: bool,
    probes: dict[str, Any] | None = None,
) -> list[Job]:
    """The run of every grid point: the fixed kwargs overridden by the point's values.
    Raises if a key is unknown, a required argument is missing or a name is not in its
    registry, so that a sweep never stops half-way over its arguments."""
    _check_kwargs("model_kwargs", model_kwargs, MODEL_KEYS)
    _check_kwargs("train_kwargs", train_kwargs, TRAIN_KEYS)
    jobs = [
        {
            "model": _model_kwargs(point, model_kwargs),
            "train": {**train_kwargs, **{k: v for k, v in point.items() if k in TRAIN_KEYS}},
            "seed": int(point.get("seed", 0)),  # type: ignore[call-overload]
            "history": history,
            **({"probes": probes} if probes else {}),
        }
        for point in points
    ]
    _check_complete(jobs)
    if probes:
        for job in jobs:
            steps = job["train"]["steps"]
            bad = [a for a in probes["at"] if not 0 <= a <= steps]
            if bad:
                raise ValueError(
                    f"probe_at steps {bad} lie outside 0..{steps}, the steps this run trains"
                )
    for job in jobs:
        for key, value in {**job["model"], **job["train"]}.items():
            if key in _NAMED:
                _NAMED[key].check(value)  # type: ignore[arg-type]
    return jobs


def _rows(
    points: list[dict[str, object]],
    jobs: list[Job],
    outcomes: list[Outcome],
    history: bool,
    probes: bool = False,
) -> pd.DataFrame:
    """One row per run (``history=False``) or per step of every run, in grid order, each
    with its run's index in grid order as ``run`` (see :func:`runs_of`). A run
    that raised keeps one row: its grid point, the configuration it was given (for the
    columns the finished runs have), ``diverged=False`` and its ``error``; so does a run
    with no step to show."""
    config_keys = {k for out in outcomes if "summary" in out for k in out["summary"]}
    metas = []
    for run, (point, job, out) in enumerate(zip(points, jobs, outcomes, strict=True)):
        if "error" in out:
            given = {**job["model"], **job["train"], "seed": job["seed"]}
            config = {k: v for k, v in given.items() if k in config_keys}
            metas.append({"run": run, **config, **point, "diverged": False, "error": out["error"]})
        else:
            metas.append({"run": run, **out["summary"], **point, "error": None})
    run_columns = list(dict.fromkeys(k for m in metas for k in m if k != "steps_done"))
    if probes:  # one row per probe row; a run with none keeps one row of its own
        frames = []
        for meta, out in zip(metas, outcomes, strict=True):
            found = out.get("probes") or []
            frames.append(pd.DataFrame([{**row, **meta} for row in found] or [meta]))
        rows = pd.concat(frames, ignore_index=True)
        rows.attrs["run_columns"] = run_columns
        return rows
    if not history:
        columns = dict.fromkeys(k for m in metas if m["error"] is None for k in m)
        columns.update(dict.fromkeys(k for m in metas for k in m))
        return pd.DataFrame(metas, columns=list(columns))
    frames = []
    for meta, out in zip(metas, outcomes, strict=True):
        meta.pop("steps_done", None)
        steps = pd.DataFrame(out.get("history") or {})
        frames.append(steps.assign(**meta) if len(steps) else pd.DataFrame([meta]))
    rows = pd.concat(frames, ignore_index=True)
    rows.attrs["run_columns"] = run_columns
    return rows


def runs_of(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run from a sweep's history or probe rows (:func:`sweep` with
    ``history=True`` or ``probes``): each run's first row, with only its run's columns
    (its configuration and outcome: ``final_val_loss``, ``diverged``, ...), in grid
    order. The sweep names those columns in ``frame.attrs["run_columns"]``, which
    filtering keeps; a frame that lost them (``pd.concat`` of two sweeps) keeps the
    columns that are constant within every run. A frame that already has one row per run comes
    back as it is (copied). Needs the ``run`` column that :func:`sweep` writes."""
    if "run" not in frame.columns:
        raise KeyError(
            "runs_of needs the 'run' column that sweep() writes; this frame has "
            f"{list(frame.columns)}"
        )
    if not frame.run.duplicated().any():
        return frame.reset_index(drop=True).copy()

    known = frame.attrs.get("run_columns")
    if known is not None and "run" in known:
        keep = [c for c in known if c in frame.columns]
        first = frame.drop_duplicates("run")
        return first[keep].sort_values("run", kind="stable").reset_index(drop=True)

    def constant(column: str) -> bool:
        values = frame[column]
        try:
            counts = values.groupby(frame.run).nunique(dropna=False)
        except TypeError:  # unhashable values (lists): compare their text
            counts = values.map(repr).groupby(frame.run).nunique(dropna=False)
        return bool((counts <= 1).all())

    keep = [c for c in frame.columns if c == "run" or constant(c)]
    first = frame.drop_duplicates("run")
    return first[keep].sort_values("run", kind="stable").reset_index(drop=True)


def sweep(
    data: Corpus,
    grid: Grid | Sequence[Grid],
    model_kwargs: Mapping[str, object] | None = None,
    train_kwargs: Mapping[str, object] | None = None,
    history: bool = False,
    progress: bool = True,
    workers: int | None = None,
    backend: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    probes: Sequence[Callable[..., pd.DataFrame]]
    | Mapping[Callable[..., pd.DataFrame], Sequence[int]]
    | None = None,
    probe_at: Sequence[int] | None = None,
    probe_seed: int = 0,
    probe_batch_size: int | None = None,
) -> pd.DataFrame:
    """Train one model per point of the Cartesian product of ``grid`` and return one DataFrame.

    ``grid`` maps names to non-empty lists of values (``{"placement": ["pre"]}``, not
    ``{"placement": "pre"}``; tuples, ranges and 1-D numpy arrays will do), or is a list
    of such grids: their points run together, in one pool of workers. A name may be any
    argument of :class:`~prenorm.TransformerLM` (``placement``, ``n_layers``, ``norm``,
    ``init``, ...), any argument of :func:`~prenorm.train` (``lr``, ``warmup_steps``,
    ``clip``, ...), or ``seed`` (integers: ``int`` or numpy integers), which seeds both
    the initialization and the batches. Fixed values go in ``model_kwargs`` /
    ``train_kwargs``. With ``history=False`` the
    result has one row per run (:meth:`~prenorm.TrainResult.summary`); with
    ``history=True`` one row per step of every run, with the run's configuration and
    ``diverged``. Rows come in grid order, however the runs were spread out.

    **Probes during training.** With ``probes`` (module-level probe functions
    ``probe(model, batch) -> DataFrame``, such as :func:`~prenorm.residual_norms` or
    :func:`~prenorm.layer_ablation`), every run also calls each probe at the steps in
    ``probe_at`` (0 is the initialization, ``steps`` the trained model; default: those
    two), on one validation batch of ``probe_batch_size`` sequences (default: the
    training ``batch_size``) drawn with seed ``probe_seed``, the same batch for every run. The result then has one row per probe
    row: the probe's columns, ``step``, ``probe`` (the function's name) and the run's
    configuration and outcome (``final_val_loss``, ``diverged``, ...), so one sweep gives
    both the loss of every run and what happened inside it. A run that diverges is
    probed up to the step where it stopped. ``history`` cannot be combined with it.
    ``probes`` may also map each probe to its own steps (``{residual_norms: [0, 100, 200],
    layer_ablation: [200]}``), for a probe that costs more than the others; then
    ``probe_at`` is not given.

    **Where the runs happen.** ``backend`` is a key of :data:`BACKENDS`. By default
    (``None``) the runs go to ``workers`` spawned processes on this machine
    (``"processes"``), or stay in this process when that number is 1 (``"serial"``).
    ``workers=None`` means: 1 when the runs train on an accelerator (CUDA or MPS: one
    GPU, one run at a time), otherwise the number of CPU cores this process may use;
    never more than the number of runs left to train. ``backend="ray"`` makes each
    point a Ray task on the current Ray instance (if none is connected, ``ray.init()``
    starts a local one, or joins the cluster that ``$RAY_ADDRESS`` names, and leaves it
    running for the next sweep; connect to a cluster yourself with
    ``ray.init(address=...)`` first), requesting one GPU per task when the cluster has
    GPUs, otherwise one CPU; there ``workers`` caps the runs in flight (default: no
    cap). Every run is trained with one intra-op thread wherever it runs (the caller's
    thread count is restored afterwards), so a grid point gives the same numbers, to
    the last bit, on every backend. Starting worker processes costs a few seconds
    (each imports torch): for a sweep that takes seconds, ``workers=1`` is faster.

    **Failures.** A run that diverges is a row with ``diverged=True``. A run that raises
    is a row with the exception in ``error`` (``"Type: message"``; ``None`` for runs
    that finished), ``diverged=False`` and no losses; a warning counts such runs. A
    worker process that dies (out of memory, a crash in native code) costs only the
    run it was running: that row's ``error`` starts with ``"WorkerDied:"`` and gives
    the exit code or signal, a new worker takes over the runs still to come, and the
    other runs finish (and are cached) as usual. Interrupting a sweep stops its workers
    at once; a sweep that is killed outright (``kill -9``) leaves no worker behind,
    for each exits when its parent is gone, and no temporary file (the corpus goes
    to each worker over its pipe). Bad arguments (unknown or missing keys, grid
    values that are not a non-empty list, seeds that are not integers, unknown names,
    ``workers < 1``, an unknown backend, Ray missing) raise before the first run starts.

    **Cache.** With ``cache=path`` every finished run is appended to that file as one
    JSON line as soon as it finishes, keyed by its full configuration (model and
    training arguments, seed, ``history``, the corpus), the package version and a
    hash of the package's source (every ``prenorm/*.py`` file); runs found there are
    not trained again, so an interrupted sweep resumes where it stopped and a finished
    one reads back at once (``seconds`` is then the original run's time). Runs that
    raised are not cached. Entries written by another package version, or by other
    source code under the same version (an editable install edited since), are
    ignored, with a warning, and trained again; so are lines that do not read back
    (not UTF-8, not JSON: a write cut off by a kill). The book never passes a cache,
    so every page shows numbers computed by the code it was built with.
    """
    from tqdm.auto import tqdm

    from . import __version__

    # Everything that can be wrong with the arguments is checked here, before any run.
    points = grid_points(grid, MODEL_KEYS + TRAIN_KEYS)
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if backend is not None:
        BACKENDS.check(backend)
        if backend == "serial" and workers not in (None, 1):
            raise ValueError(f"backend 'serial' runs one point at a time; got workers={workers}")
        if backend == "ray":
            _import_ray()
    spec = None
    if probes is not None:
        if history:
            raise ValueError("give either history=True or probes, not both")
        if not probes:
            raise ValueError("probes must name at least one probe function")
        tk = {"batch_size": 16, **(train_kwargs or {})}
        steps = sorted({int(p.get("steps", tk.get("steps") or 0)) for p in points})
        when: dict[str, list[int]] = {}
        if isinstance(probes, Mapping):  # each probe at its own steps
            if probe_at is not None:
                raise ValueError("give the steps in the probes mapping or in probe_at, not both")
            when = {_probe_ref(fn): sorted({int(a) for a in at}) for fn, at in probes.items()}
            at = sorted({a for steps_ in when.values() for a in steps_})
        else:
            at = sorted({int(a) for a in probe_at}) if probe_at is not None else None
        if at is None:
            if len(steps) != 1 or not steps[0]:
                raise ValueError("give probe_at when the runs differ in steps")
            at = [0, int(steps[0])]
        spec = {
            "fns": [_probe_ref(fn) for fn in probes],
            "at": at,
            **({"when": when} if when else {}),
            "seed": int(probe_seed),
            "batch_size": int(probe_batch_size or tk["batch_size"]),
        }
    elif probe_at is not None:
        raise ValueError("probe_at is given but probes is not")
    model_kwargs = {"vocab_size": data.vocab_size, **(model_kwargs or {})}
    jobs = _jobs(points, model_kwargs, dict(train_kwargs or {}), history, spec)

    outcomes: dict[int, Outcome] = {}
    path = Path(cache) if cache is not None else None
    keys: list[str] = []
    if path is not None:
        corpus = _corpus_id(data)
        keys = [_key(job, corpus) for job in jobs]
        cached = _read_cache(path, __version__, _source_hash())
        outcomes = {i: cached[k] for i, k in enumerate(keys) if k in cached}
        path.parent.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(len(jobs)) if i not in outcomes]
    n: int | None = workers or _default_workers([jobs[i] for i in todo])
    name = backend or ("processes" if n > 1 else "serial")
    if name == "ray" and workers is None:
        n = None  # let Ray's resources decide

    with tqdm(total=len(jobs), initial=len(outcomes), disable=not progress, desc="sweep") as bar:
        if todo:
            for j, outcome in BACKENDS[name](data, [jobs[i] for i in todo], n):
                i = todo[j]
                outcomes[i] = _plain(outcome)
                if path is not None and "error" not in outcome:
                    version = {"prenorm": __version__, "source": _source_hash()}
                    _append(
                        path, {**version, "key": keys[i], "job": jobs[i], "outcome": outcomes[i]}
                    )
                bar.update(1)
    failed = [outcomes[i]["error"] for i in range(len(jobs)) if "error" in outcomes[i]]
    if failed:
        warnings.warn(
            f"{len(failed)} of {len(jobs)} runs raised (see the 'error' column), the first "
            f"with {failed[0]}",
            stacklevel=2,
        )
    return _rows(points, jobs, [outcomes[i] for i in range(len(jobs))], history, spec is not None)


#: How :func:`mean_over_seeds` pools a column whose name it knows: a cell has diverged
#: if any of its seeds diverged, and at the first step where one did.
SEED_POOLING: dict[str, str] = {"diverged": "any", "diverged_at": "min"}


def mean_over_seeds(
    frame: pd.DataFrame,
    keys: Sequence[str],
    seed: str = "seed",
    how: Mapping[str, str] | None = None,
    min_seeds: int = 1,
) -> pd.DataFrame:
    r"""Pool the seeds of every cell: one row per distinct combination of ``keys`` (a
    *cell*: a design at a learning rate, say, or a probe's layer at a step), in order of
    first appearance, with ``n_seeds`` the number of seeds found in it.

    For a cell with seeds :math:`s = 1..n` and a numeric column :math:`v`, the row holds
    the mean :math:`\bar v = \tfrac1n \sum_s v_s`; a boolean column holds
    :math:`\bigvee_s v_s` (any seed); other columns the first value that is not missing. The names in
    :data:`SEED_POOLING`, updated by ``how`` (column to a pandas aggregation name), are
    pooled as given: ``diverged`` by *any* (a design that diverged at a learning rate
    under one seed of two is not safe there) and ``diverged_at`` by the earliest step.
    Missing values in ``keys`` form cells of their own (``alpha0`` of a model without
    DyT, say). A cell with fewer than ``min_seeds`` seeds is left out: give the number of
    seeds to pool probe rows, so that a step that not every seed reached (one diverged
    before it, and a diverged run is probed only up to its stop) is missing, as it was for
    a diverged run alone, rather than the mean of the seeds that survived. ``seed`` must
    be a column; the spread over seeds is the caller's to report (group ``frame`` by
    ``seed``).
    """
    keys = list(keys)
    missing = [k for k in [*keys, seed] if k not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the frame; it has {list(frame.columns)}")
    if seed in keys:
        raise ValueError(f"the seed column {seed!r} cannot be a key: it is what is pooled")
    if isinstance(min_seeds, bool) or not isinstance(min_seeds, int) or min_seeds < 1:
        raise ValueError(f"min_seeds must be a positive integer, got {min_seeds!r}")
    rules = {**SEED_POOLING, **(how or {})}
    agg: dict[str, str] = {}
    for col in frame.columns:
        if col in keys or col == seed:
            continue
        if col in rules:
            agg[col] = rules[col]
        elif pd.api.types.is_bool_dtype(frame[col]):
            agg[col] = "any"
        elif pd.api.types.is_numeric_dtype(frame[col]):
            agg[col] = "mean"
        else:
            agg[col] = "first"
    groups = frame.groupby(keys, dropna=False, sort=False)
    out = groups.agg(agg) if agg else groups.size().to_frame("_").drop(columns="_")
    out["n_seeds"] = groups[seed].nunique()
    out = out[out["n_seeds"] >= min_seeds]
    return out.reset_index()[[*keys, *agg, "n_seeds"]]
