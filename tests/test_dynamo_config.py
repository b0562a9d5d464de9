"""prenorm.benchmark's fail-on-recompile-limit switch across the supported torch range: torch
2.7+ calls it fail_on_recompile_limit_hit, 2.6 fail_on_cache_limit_hit, 2.4 and 2.5 have none."""

import contextlib

import pytest
import torch

from prenorm import benchmark


def test_the_installed_torch_gets_a_switch_it_has():
    # Fails when the patch names a config this torch lacks (a KeyError, as torch 2.4 raised
    # for fail_on_recompile_limit_hit), or does not turn an existing switch on.
    config = torch._dynamo.config
    have = [n for n in benchmark._FAIL_ON_LIMIT_CONFIGS if hasattr(config, n)]
    with benchmark._fail_on_recompile_limit():
        if have:
            assert getattr(config, have[0]) is True
    if have:
        assert getattr(config, have[0]) is False  # restored


class _Config:
    """A stand-in for torch._dynamo.config with only the given switches."""

    def __init__(self, *names: str) -> None:
        self.patched: dict[str, bool] = {}
        for n in names:
            setattr(self, n, False)

    def patch(self, **kw: bool) -> contextlib.AbstractContextManager:
        self.patched.update(kw)
        return contextlib.nullcontext()


@pytest.mark.parametrize(
    "names, expected",
    [
        (("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"), "fail_on_recompile_limit_hit"),
        (("fail_on_cache_limit_hit",), "fail_on_cache_limit_hit"),
        ((), None),
    ],
    ids=["torch>=2.7", "torch 2.6", "torch 2.4-2.5"],
)
def test_each_torch_gets_its_own_name(monkeypatch, names, expected):
    # Fails when a torch release's spelling is not the one patched (2.7+: the new name; 2.6:
    # the old one), or when a torch without either switch gets a patch (a KeyError there).
    fake = _Config(*names)
    monkeypatch.setattr(torch._dynamo, "config", fake)
    with benchmark._fail_on_recompile_limit():
        pass
    assert fake.patched == ({expected: True} if expected else {})
