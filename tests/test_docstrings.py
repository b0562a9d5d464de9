"""Docstrings with LaTeX are raw strings, so the API page shows ``\\beta``, not a backspace."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prenorm"


def _docstring_literals():
    for path in sorted(PACKAGE.glob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body
                if (
                    body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                ):
                    if isinstance(body[0].value.value, str):
                        yield path.name, body[0].lineno, ast.get_source_segment(source, body[0])


def test_every_docstring_with_a_backslash_is_raw():
    # Fails for a docstring such as """... :math:`\beta` ...""", where Python reads \b as a
    # backspace and \a as a bell (make_norm's did): the API page then shows control
    # characters where the math should be.
    bad = [
        f"{name}:{line}"
        for name, line, literal in _docstring_literals()
        if "\\" in literal and not re.match(r"[rR]", literal)
    ]
    assert not bad, f"docstrings with backslashes that are not raw strings: {bad}"


def test_no_docstring_holds_control_characters():
    import prenorm

    found = []
    for name in prenorm.__all__:
        doc = getattr(getattr(prenorm, name), "__doc__", None) or ""
        if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", doc):
            found.append(name)
    assert not found, found
