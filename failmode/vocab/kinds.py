"""Vocabulary kinds: how an entry of each kind is phrased and checked.

`background`: a prepositional phrase completing "a photo of a {class}" ("in a desert", "on a frozen lake").
`color`: a clause starting "that is" ("that is bright pink", "that is painted neon green").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from failmode.registry import Registry
from failmode.vocab import text


@dataclass(frozen=True)
class Kind:
    """How entries of one vocabulary kind are phrased (`phrase`), recognised (`is_phrased`) and vetted."""

    name: str
    phrase: Callable[[str], str]
    is_phrased: Callable[[str], bool]
    rule: str
    extra_check: Callable[[str], str | None] = lambda entry: None


KINDS: Registry[Kind] = Registry("vocabulary kind")


def _is_background(entry: str) -> bool:
    return entry == text.clean(entry) and text.starts_with_prefix(entry, text.lexicon()["background_prefixes"])


def _is_color(entry: str) -> bool:
    prefix = text.lexicon()["color_prefix"] + " "
    return entry == text.clean(entry) and entry.startswith(prefix) and len(entry) > len(prefix)


def _color_check(entry: str) -> str | None:
    return None if text.has_color_word(entry) else "names no colour"


KINDS.register("background")(
    Kind("background", text.phrase_background, _is_background, "lower case, starting with a preposition such as 'in', 'on', 'at'")
)
KINDS.register("color")(
    Kind("color", text.phrase_color, _is_color, "lower case, starting with 'that is'", _color_check)
)


def get_kind(name: str) -> Kind:
    """The registered kind `name` (UsageError listing known kinds otherwise)."""
    return KINDS.get(name)
