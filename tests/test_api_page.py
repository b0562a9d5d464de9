"""The API page documents every public name, and nothing that is not public."""

import re
from pathlib import Path

import prenorm

ROOT = Path(__file__).resolve().parents[1]


def _documented() -> dict[str, set[str]]:
    """Module name -> the members its automodule directive lists."""
    page = (ROOT / "book" / "api.md").read_text()
    blocks = re.findall(r"\.\. automodule::\s*prenorm\.(\w+)\s*\n\s*:members:\s*(.+)", page)
    return {mod: {m.strip() for m in members.split(",") if m.strip()} for mod, members in blocks}


def test_api_page_lists_exactly_the_public_names():
    by_module = _documented()
    assert "book" in by_module, "the chapter-setup module is public (prenorm.book)"
    assert by_module.pop("book") == set(prenorm.book.__all__)
    assert by_module.pop("ledger") == set(prenorm.ledger.__all__)
    assert by_module.pop("exercises") == set(prenorm.exercises.__all__)
    documented = set().union(*by_module.values()) | {"book", "ledger", "exercises"}
    public = set(prenorm.__all__)
    assert not public - documented, f"public but not on the API page: {sorted(public - documented)}"
    assert not documented - public, f"on the API page but not public: {sorted(documented - public)}"
    for mod, names in by_module.items():  # each name is documented where it is defined
        module = getattr(prenorm, mod)
        assert all(hasattr(module, n) for n in names), (mod, names)
