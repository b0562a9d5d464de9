"""prenorm.rmsnorm_study (chapter 7's tables and figures) and the scale presets' sizes
of the norm-speed benchmark."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import prenorm as P  # noqa: E402


def _speed() -> pd.DataFrame:
    """A time_norms-shaped frame with made-up times: at width d, LayerNorm takes d us and
    RMSNorm 0.5 d us (ops) or 2 d us (torch)."""
    rows = []
    for d in (256, 1024):
        for kind, factor in (("ops", 0.5), ("torch", 2.0)):
            for norm, t in (("layernorm", d * 1e-6), ("rmsnorm", factor * d * 1e-6)):
                rows.append(
                    {
                        "implementation": f"{norm}-{kind}",
                        "norm": norm,
                        "kind": kind,
                        "d": d,
                        "seconds": t,
                        "bound_fraction": 1e-4 / t,
                    }
                )
    return pd.DataFrame(rows)


def test_time_ratios_divides_rmsnorm_by_layernorm():
    # Fails if the ratio is inverted (2 and 0.5 would swap) or taken across kinds or widths.
    ratio = P.time_ratios(_speed())
    assert list(ratio.index) == [256, 1024]
    assert ratio["ops"].tolist() == pytest.approx([0.5, 0.5])
    assert ratio["torch"].tolist() == pytest.approx([2.0, 2.0])


def test_speed_table_shows_milliseconds_and_fractions():
    table = P.speed_table(_speed())
    assert table.loc[1024, ("torch", "ms", "rmsnorm")] == pytest.approx(2 * 1024e-3)
    assert table.loc[256, ("ops", "bound_fraction", "layernorm")] == pytest.approx(1e-4 / 256e-6)


def test_pass_table_sums_count_passes():
    # Against count_passes itself: operators are its rows, transfers its reads plus writes.
    # The built-in LayerNorm on the CPU is one fused kernel each way: exactly the minimum.
    names = ["layernorm-ops", "layernorm-torch"]
    table = P.pass_table(names)
    for name in names:
        ops = P.count_passes(name)
        assert table.loc[name, "operators"] == len(ops)
        assert table.loc[name, "operators (forward)"] == (ops.phase == "forward").sum()
        assert table.loc[name, "transfers"] == ops.reads.sum() + ops.writes.sum()
    assert table.loc["layernorm-torch", "transfers"] == P.benchmark.BOUND_TRANSFERS
    assert table.loc["layernorm-torch", "x minimum"] == 1.0


def test_plots_draw_their_panels():
    fig = P.plot_norm_speed(_speed())
    assert len(fig.axes) == 2 and fig.axes[1].get_yscale() == "log"
    assert len(fig.axes[1].get_lines()) == 4  # ops, torch, equal times, the post's line
    plt.close(fig)
    model = P.TransformerLM(11, 8, 2, 2, 4)
    fig = P.plot_affine_drift(P.norm_affine_drift(model))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "0.attn",
        "0.mlp",
        "1.attn",
        "1.mlp",
        "final",
    ]
    plt.close(fig)
    losses = pd.DataFrame({"layernorm": [3.0, 3.1, 3.2], "rmsnorm": [3.05, 3.1, 3.1]})
    est = P.t_interval((losses.rmsnorm - losses.layernorm).to_numpy())
    fig = P.plot_paired_losses(losses, est, 0.02)
    assert len(fig.axes) == 2
    # the dashed one-sided threshold sits at +tol
    assert [tuple(ln.get_ydata()) for ln in fig.axes[1].lines if ln.get_linestyle() == "--"] == [
        (0.02, 0.02)
    ]
    plt.close(fig)


def test_every_preset_sizes_the_speed_benchmark():
    # Fails if a preset lacks the fields or sizes them so that the chapter cannot run.
    for preset in P.PRESETS.values():
        widths = preset.speed_widths
        assert isinstance(widths, tuple) and len(widths) >= 2
        assert all(isinstance(w, int) and w > 0 for w in widths)
        assert list(widths) == sorted(set(widths))
        assert preset.speed_tokens > 0 and preset.speed_repeats >= 1
    ci, cpu, gpu = (P.PRESETS[n] for n in ("ci", "cpu", "gpu"))
    assert ci.speed_tokens <= cpu.speed_tokens <= gpu.speed_tokens
    assert ci.speed_repeats <= cpu.speed_repeats <= gpu.speed_repeats
    assert ci.speed_widths == (256, 1024)  # the values chapter 7 had before they moved here
    assert cpu.speed_widths == (256, 512, 1024, 2048, 4096)
    assert gpu.speed_widths[-1] == 8192 and (cpu.speed_tokens, gpu.speed_tokens) == (512, 16384)
