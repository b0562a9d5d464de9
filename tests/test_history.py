"""The table of chapter 6 (prenorm/history_models.toml) and the functions of prenorm.history."""

import math
import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest
import torch

import prenorm as P
from prenorm.history import NOT_IN_PRENORM

ROOT = Path(__file__).resolve().parents[1]
TINY = {"vocab_size": 11, "d_model": 8, "n_heads": 2, "seq_len": 4}
SHIPPED = resources.files("prenorm").joinpath(P.HISTORY_FILE).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def table():
    return P.load_history()


def test_the_file_ships_with_the_package():
    # Fails if the data file is not where importlib.resources looks, or if pyproject.toml
    # does not list it as package data (an installed prenorm would then lack it).
    assert resources.files("prenorm").joinpath(P.HISTORY_FILE).is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert P.HISTORY_FILE in pyproject["tool"]["setuptools"]["package-data"]["prenorm"]


def test_columns_and_values(table):
    assert table.index.name == "model" and table.index.is_unique
    assert list(table.columns) == [
        *"year placement norm slots parallel final_norm norm_key norm_bias".split(),
        *"config post_says cite paper code rests_on prenorm".split(),
    ]
    for slots in table.slots.dropna():
        assert isinstance(slots, tuple) and set(slots) <= set(P.SLOTS)
    assert set(table.post_says.dropna()) <= set(P.POST_LABELS)
    # the prenorm column says the config in words, or why there is none
    assert table.loc["OLMo 2", "prenorm"] == "placement='reorder', norm='rmsnorm', bias=False"
    assert table.loc["PaLM", "prenorm"] == NOT_IN_PRENORM
    assert table.loc["Gemini", "prenorm"] == "nothing to configure"


def test_every_cited_key_is_in_the_bibliography(table):
    # Fails for a row whose cite field names a key that book/references.bib lacks (a typo,
    # or a source added to the table but not to the bibliography).
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"^@\w+\{([^,\s]+),", bib, flags=re.M))
    assert len(keys) > 10
    cited = {k for row in table.cite for k in row}
    assert cited and not cited - keys, sorted(cited - keys)
    assert all(len(row) >= 1 for row in table.cite)


def _norms_of(block, which):
    """The block's norms in one sublayer, read from its attributes (not via norm_layout)."""
    return {s: getattr(block, f"{which}_norm_{s}") for s in ("in", "out", "after")}


def test_every_configuration_builds_the_norms_its_row_claims(table):
    # Walks the built modules directly: fails if a row's config builds norms in other
    # slots, of another type, with a bias where the row says none (or the reverse), or a
    # final norm the row does not claim; and if the placement's own spec disagrees.
    configured = table[table.config.notna()]
    assert len(configured) == 9
    for name, row in configured.iterrows():
        spec = P.PLACEMENTS[row.config["placement"]]
        assert tuple(s for s in ("in", "out", "after") if getattr(spec, f"norm_{s}")) == row.slots
        model = P.TransformerLM(n_layers=2, **TINY, **row.config)
        for block in model.blocks:
            for which in ("attn", "mlp"):
                norms = _norms_of(block, which)
                present = tuple(s for s, n in norms.items() if n is not None)
                assert present == row.slots, (name, which, present)
                for s in present:
                    assert isinstance(norms[s], P.NORMS[row.norm_key]), (name, s)
                    assert (getattr(norms[s], "bias", None) is not None) == row.norm_bias, name
        assert isinstance(model.final_norm, P.NORMS[row.norm_key]) == row.final_norm, name
        logits, _ = model(torch.zeros(1, 4, dtype=torch.long))
        assert torch.isfinite(logits).all()
    built = P.check_history_builds(table, **TINY)
    assert list(built.index) == list(configured.index)
    assert built.loc["Gemma 2", "norms per block"] == 4
    assert built.loc["T5", "norm"] == "RMSNorm" and not built.loc["BERT", "final norm"]


@pytest.mark.parametrize(
    ("model", "column", "value", "message"),
    [
        ("GPT-2", "slots", ("after",), "GPT-2: layer 0 attn has norms in ('in',)"),
        ("LLaMA", "norm_key", "layernorm", "LLaMA: norms ['rmsnorm']"),
        ("BERT", "norm_bias", False, "BERT: norm biases [True]"),
        ("OLMo 2", "final_norm", False, "OLMo 2: final norm True"),
        ("PaLM", "parallel", False, "PaLM is marked not in prenorm, but placements ['pre', 'lns']"),
    ],
)
def test_check_history_builds_rejects_a_row_that_disagrees(table, model, column, value, message):
    # Fails if check_history_builds accepts a row whose claim its built model contradicts.
    bad = table.copy()
    bad.at[model, column] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        P.check_history_builds(bad, **TINY)


def test_norm_layout():
    peri = P.norm_layout(P.build_model(n_layers=3, placement="peri", norm="rmsnorm", **TINY))
    assert len(peri) == 3 * 2 * 2 + 1  # in and out, in both sublayers of 3 blocks, + final
    assert list(peri.iloc[:4].slot) == ["in", "out", "in", "out"]
    assert list(peri.iloc[:4].sublayer) == ["attn", "attn", "mlp", "mlp"]
    assert peri.iloc[-1].layer == 3 and peri.iloc[-1].sublayer == "final"
    assert set(peri.norm) == {"rmsnorm"} and not peri.bias.any()
    post = P.norm_layout(P.build_model(n_layers=2, placement="post", bias=True, **TINY))
    assert list(post.slot) == ["after"] * 4 and post.bias.all()  # no final norm
    assert P.norm_layout(P.build_model(n_layers=1, placement="rezero", **TINY)).empty


def test_placements_with_slots():
    assert P.placements_with_slots(["after"]) == ["post"]  # DeepNorm's scaled skip excluded
    assert P.placements_with_slots(("in", "out")) == ["peri"]
    assert P.placements_with_slots(("out",)) == ["reorder"]
    assert {"pre", "lns"} <= set(P.placements_with_slots(("in",)))
    assert P.placements_with_slots(("in", "after")) == []
    with pytest.raises(ValueError, match="'inside'.*'in', 'out', 'after'"):
        P.placements_with_slots(("inside",))


def test_record_shares_of_the_shipped_table(table):
    # The counts the chapter's prose states, typed from the table by hand: fails if a row
    # or a count changes.
    shares = P.record_shares(table)
    assert shares.loc["early_post", ["n", "k"]].tolist() == [2, 2]
    assert shares.loc["late_pre", ["n", "k"]].tolist() == [4, 4]
    assert shares.loc["as_says", ["n", "k"]].tolist() == [7, 6]
    assert shares.loc["late_in", ["n", "k"]].tolist() == [8, 7]
    assert shares.loc["late_clean", ["n", "k"]].tolist() == [8, 8]
    assert shares.without["late_in"] == "OLMo 2" and shares.without["as_says"] == "Gemini"
    assert list(table.index[table.slots.isna()]) == ["Gemini"]


ENTRY = """
[[model]]
model = "{name}"
year = {year}
placement = "p"
norm = "n"
parallel = false
{extra}
cite = ["blogpost"]
paper = "p"
code = "c"
rests_on = "r"
"""


def _write(tmp_path, entries):
    path = tmp_path / "models.toml"
    path.write_text("".join(ENTRY.format(name=n, year=y, extra=extra) for n, y, extra in entries))
    return path


def test_record_flags_and_shares_of_a_small_table(tmp_path):
    # A table whose answers are counted by hand (see each line); fails if a group or a
    # property is computed differently.
    path = _write(
        tmp_path,
        [
            ("A", 2015, 'slots = ["after"]\npost_says = "Post-LN"'),  # early, as labelled
            ("B", 2016, 'slots = ["in"]\npost_says = "Post-LN"'),  # early, mislabelled
            ("Pivot", 2017, 'slots = ["in"]\npost_says = "Pre-LN"'),  # late, as labelled
            ("C", 2018, 'slots = ["out", "in"]'),  # late, stored in forward order
            ("D", 2019, 'post_says = "Pre-LN"'),  # undocumented
            ("E", 2020, 'slots = ["in", "after"]'),  # late, norm on the sum
        ],
    )
    t = P.load_history(path)
    assert t.loc["C", "slots"] == ("in", "out")
    f = P.record_flags(t, pivot="Pivot")
    assert list(f.index[f.early]) == ["A", "B"] and list(f.index[f.late]) == ["Pivot", "C", "E"]
    assert list(f.index[f.pre_ln]) == ["B", "Pivot", "C"]
    assert list(f.index[f.as_post_says]) == ["A", "Pivot"]
    assert not f.loc["D"].drop("in_post").any()
    s = P.record_shares(t, pivot="Pivot")
    assert s.loc["early_post", ["n", "k", "without"]].tolist() == [2, 1, "B"]
    assert s.loc["late_pre", ["n", "k"]].tolist() == [1, 1]  # D is not documented
    assert s.loc["as_says", ["n", "k", "without"]].tolist() == [4, 2, "B, D"]
    assert s.loc["late_in", ["n", "k"]].tolist() == [3, 3]
    assert s.loc["late_clean", ["n", "k", "without"]].tolist() == [3, 2, "E"]
    assert s.share["as_says"] == 0.5
    empty = P.record_shares(t, pivot="A")  # nothing is documented before the first year
    assert empty.n["early_post"] == 0 and math.isnan(empty.share["early_post"])
    with pytest.raises(ValueError, match="'GPT-2'.*'Pivot'"):
        P.record_flags(t)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('slots = ["after"]', 'slots = ["inside"]', "'inside'; valid norm slots are 'in', 'out'"),
        ('placement = "peri"', 'placement = "sandwich"', "'sandwich'; valid placements are"),
        ('norm_key = "layernorm"', 'norm_key = "batchnorm"', "'batchnorm'; valid norms are"),
        ('post_says = "Post-LN"', 'post_says = "Peri-LN"', "'Peri-LN'; valid labels are 'Post-LN'"),
        ("year = 2017\n", 'year = 2017\ncolour = "red"\n', "'colour'; valid fields are 'model'"),
        ("year = 2017\n", "", "(model 'Transformer'): missing required fields ['year']"),
        ("year = 2017", 'year = "2017"', "year must be an integer year, got '2017'"),
        ('slots = ["after"]\n', "", "a row with a config must document ['slots']"),
        ("bias = true }", 'bias = "yes" }', "config.bias must be true or false, got 'yes'"),
        ('model = "BERT"', 'model = "Transformer"', "listed more than once: ['Transformer']"),
        ('cite = ["vaswani2017attention"]', "cite = []", "cite must be a non-empty list"),
        ('[[model]]\nmodel = "BERT"', '[[model]\nmodel = "BERT"', "not valid TOML"),
    ],
)
def test_a_corrupted_file_fails_with_a_clear_error(tmp_path, old, new, message):
    # Each corruption of the shipped file must raise a ValueError naming the bad value
    # (and the valid choices); fails if the loader accepts it or says something else.
    assert old in SHIPPED
    path = tmp_path / "models.toml"
    path.write_text(SHIPPED.replace(old, new, 1))
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        P.load_history(path)
    assert str(path) in str(err.value)


def test_plot_timeline(table):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = P.plot_timeline(table)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(table.index)
    assert len(ax.collections) == len(table)  # one marker per model
    assert len(ax.get_legend().get_texts()) == 2  # the norms' legend; the slots' is an artist
    plt.close(fig)
