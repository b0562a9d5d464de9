"""The README's API tour runs as written."""

import re
from pathlib import Path

import matplotlib

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tour_runs():
    matplotlib.use("Agg")
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    ns: dict[str, object] = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), ns)
    assert ns["J"].shape == (8, 64, 64)
    assert not ns["result"].diverged
    assert len(ns["runs"]) == 8
