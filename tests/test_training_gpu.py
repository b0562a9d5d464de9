"""The GPU helpers of prenorm.training, exercised on the CPU with CUDA absent: mixed
precision (bf16 autocast, and fp16 with a gradient scaler), torch.compile, per-step
timing (the CUDA-event branch through stand-in events) and peak-memory reporting."""

import math

import pytest
import torch

from prenorm import TransformerLM, train, training
from prenorm.devices import amp_dtype, peak_memory_mb, reset_peak_memory
from prenorm.training import HISTORY_COLUMNS, StepTimer, compiled


def _tiny(corpus, seed=0):
    torch.manual_seed(seed)
    return TransformerLM(corpus.vocab_size, 32, 2, 2, 16, placement="pre")


def test_history_has_tokens_per_second_and_cpu_reports_no_peak_memory(corpus):
    r = train(_tiny(corpus), corpus, steps=8, lr=1e-3, batch_size=4, device="cpu")
    assert tuple(r.history.columns) == HISTORY_COLUMNS
    tps = r.history["tokens_per_s"]
    assert (tps > 0).all() and tps.map(math.isfinite).all()
    # tokens per step / step time: the steps' times add up to no more than the run's
    step_seconds = (4 * 16 / tps).sum()
    assert step_seconds <= r.seconds
    assert r.peak_memory_mb is None and r.summary()["peak_memory_mb"] is None


def test_compile_trains_the_same_numbers(corpus):
    # The "eager" backend traces the model with TorchDynamo and runs the captured graphs
    # with eager kernels: the plumbing of compile=..., without a C++ toolchain's minutes.
    kw = dict(steps=4, lr=1e-3, batch_size=4, device="cpu", eval_interval=2)
    torch._dynamo.reset()
    a = train(_tiny(corpus, 1), corpus, **kw)
    b = train(_tiny(corpus, 1), corpus, compile="eager", **kw)
    assert a.history["train_loss"].tolist() == b.history["train_loss"].tolist()
    assert a.history["val_loss"].dropna().tolist() == b.history["val_loss"].dropna().tolist()
    assert b.config["compile"] == "eager" and "compile" not in a.config
    model = _tiny(corpus)
    assert compiled(model, False) is model
    assert compiled(model, "eager") is not model


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_mixed_precision_paths_train_on_cpu(corpus, monkeypatch, dtype):
    # On CUDA, amp_dtype picks bf16 (or fp16 with a GradScaler on older GPUs); here the
    # same code runs under CPU autocast, so both paths are exercised without a GPU.
    scalers = []
    real_scaler = torch.amp.GradScaler

    def recording_scaler(*args, **kwargs):
        scalers.append(args)
        return real_scaler(*args, **kwargs)

    monkeypatch.setattr(training, "amp_dtype", lambda dev: dtype)
    monkeypatch.setattr(torch.amp, "GradScaler", recording_scaler)
    model = _tiny(corpus)
    seen = []  # the dtype the output head computes in: the autocast dtype when it is on
    model.head.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    r = train(model, corpus, steps=12, lr=3e-3, batch_size=4, device="cpu")
    h = r.history
    assert not r.diverged and len(h) == 12
    assert h["train_loss"].tail(3).mean() < h["train_loss"].head(3).mean()
    assert scalers == ([("cpu",)] if dtype == torch.float16 else [])
    assert set(seen) == {dtype}  # autocast was on, in training and evaluation
    # (Comparing the first loss with fp32's, as this test once did, is no test: on some
    # CPUs fp16 autocast gives the fp32 loss to every printed digit.)


class _FakeEvent:
    """A stand-in for torch.cuda.Event: 'records' a clock that moves 5 ms per event."""

    clock = 0.0
    synced = 0

    def __init__(self, enable_timing=False):
        assert enable_timing

    def record(self):
        _FakeEvent.clock += 5.0
        self.t = _FakeEvent.clock

    def synchronize(self):
        _FakeEvent.synced += 1

    def elapsed_time(self, end):
        return end.t - self.t


def test_step_timer_reads_cuda_events_once_at_the_end(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    timer = StepTimer(torch.device("cuda"))
    for _ in range(3):
        timer.start()
        timer.stop()
    assert _FakeEvent.synced == 0  # the loop itself never waits on the GPU
    assert timer.seconds() == pytest.approx([0.005] * 3)
    assert _FakeEvent.synced == 1
    cpu = StepTimer(torch.device("cpu"))
    cpu.start()
    cpu.stop()
    assert cpu.seconds()[0] >= 0 and StepTimer("cpu").seconds() == []


def test_peak_memory_is_read_from_cuda_and_none_elsewhere(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(d))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2**20)
    reset_peak_memory("cuda:0")
    assert calls == [torch.device("cuda:0")]
    assert peak_memory_mb("cuda:0") == 3.0
    reset_peak_memory("cpu")
    assert calls == [torch.device("cuda:0")] and peak_memory_mb("cpu") is None


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [
        ((7, 5), torch.float16),
        ((7, 0), torch.float16),
        ((8, 0), torch.bfloat16),
        ((9, 0), torch.bfloat16),
    ],
    ids=["T4", "V100", "A100", "H100"],
)
def test_autocast_dtype_is_bf16_only_where_native(monkeypatch, capability, dtype):
    # A T4 reports bf16 as supported (emulated, slowly): it must get fp16 and a scaler.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: capability)
    assert amp_dtype("cuda") is dtype
    assert amp_dtype("cpu") is None
