"""One idiom for every named choice: a mapping from name to what builds it.

Placements, norms, inits, schedules, optimizers, sweep backends and scale
presets are each a :class:`Registry`. Looking up a name that is not there raises
:class:`UnknownNameError`, whose message names the bad value and lists the valid
ones, in the same words everywhere. A new design is one more entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError, KeyError):
    """An unknown name: a ``ValueError`` for callers, a ``KeyError`` for mappings."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def unknown(
    kind: str, name: object, valid: Iterable[object], plural: str | None = None
) -> UnknownNameError:
    """The error for a ``name`` that is not one of ``valid``:
    ``unknown placement 'mid'; valid placements are 'post', 'pre', ...``."""
    choices = ", ".join(map(repr, valid))
    return UnknownNameError(f"unknown {kind} {name!r}; valid {plural or kind + 's'} are {choices}")


class Registry(Mapping[str, T]):
    """An ordered, read-mostly mapping from names to builders (classes, functions or
    specs) of one ``kind``. ``registry[name]`` raises :class:`UnknownNameError` with
    the list of valid names; :meth:`register` adds an entry."""

    def __init__(self, kind: str, entries: Mapping[str, T], plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or kind + "s"
        self._entries: dict[str, T] = dict(entries)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            raise unknown(self.kind, name, self._entries, self.plural) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def register(self, name: str, value: T) -> T:
        """Add ``value`` under ``name`` (a new name only) and return it."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = value
        return value

    def check(self, name: str) -> str:
        """Return ``name`` if it is registered, else raise :class:`UnknownNameError`."""
        self[name]
        return name

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
