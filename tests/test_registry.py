"""Every named choice is a Registry with one 'unknown name' error."""

import pytest

import prenorm as P
from prenorm.registry import Registry, UnknownNameError

REGISTRIES = {
    "placement": P.PLACEMENTS,
    "norm": P.NORMS,
    "init": P.INITS,
    "schedule": P.SCHEDULES,
    "optimizer": P.OPTIMIZERS,
    "scale": P.PRESETS,
}


@pytest.mark.parametrize("kind", list(REGISTRIES))
def test_every_registry_names_the_bad_value_and_the_valid_ones(kind):
    reg = REGISTRIES[kind]
    assert isinstance(reg, Registry) and reg.kind == kind
    valid = ", ".join(f"'{k}'" for k in reg)
    with pytest.raises(ValueError) as err:
        reg["nonesuch"]
    assert str(err.value) == f"unknown {kind} 'nonesuch'; valid {kind}s are {valid}"
    assert "nonesuch" not in reg and [] not in reg  # unhashable names are simply absent
    with pytest.raises(UnknownNameError):
        reg[["a", "list"]]
    assert all(k in reg for k in reg)


def test_the_entry_points_use_the_registries(corpus):
    """The same error reaches the user from the functions that take the names."""
    with pytest.raises(ValueError, match=r"^unknown placement 'mid'; valid placements are"):
        P.Block(16, 4, placement="mid")
    with pytest.raises(ValueError, match=r"^unknown norm 'groupnorm'; valid norms are"):
        P.TransformerLM(11, 16, 1, 2, 8, norm="groupnorm")
    with pytest.raises(ValueError, match=r"^unknown init 'he'; valid inits are"):
        P.TransformerLM(11, 16, 1, 2, 8, init="he")
    with pytest.raises(ValueError, match=r"^unknown schedule 'exp'; valid schedules are"):
        P.lr_at(0, 1.0, 10, schedule="exp")
    model = P.TransformerLM(corpus.vocab_size, 16, 1, 2, 8)
    with pytest.raises(ValueError, match=r"^unknown optimizer 'lion'; valid optimizers are"):
        P.train(model, corpus, steps=1, lr=1e-3, optimizer="lion", device="cpu")
    with pytest.raises(ValueError, match=r"^unknown scale 'huge'; valid scales are"):
        P.scale("huge")


def test_register_adds_a_new_name_once():
    reg = Registry("colour", {"red": 1})
    assert reg.register("blue", 2) == 2 and list(reg) == ["red", "blue"]
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        reg.register("red", 3)
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("", 3)


def test_a_registered_placement_builds_and_steps():
    """Extending a registry is enough for the model to use the new entry."""
    reg = P.PLACEMENTS
    name = "test-pre-twice"
    spec = P.Placement(norm_in=True, norm_out=True, final_norm=True, formula="-", source="test")
    reg.register(name, spec)
    try:
        import torch

        m = P.build_model(
            seed=0, vocab_size=11, d_model=16, n_layers=2, n_heads=2, seq_len=8, placement=name
        )
        assert (
            m.blocks[0].norm_at("attn", "out") is not None
            and m.blocks[0].norm_at("attn", "after") is None
        )
        assert torch.isfinite(m(torch.zeros(1, 8, dtype=torch.long))[0]).all()
    finally:
        reg._entries.pop(name)
