"""Argument helpers shared by several commands (no heavy imports)."""

from __future__ import annotations

import json
from typing import Any

from failmode.errors import UsageError


def parse_options(items: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE strings (from a repeatable `flag`) as a dict; values that parse as JSON are decoded."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} wants KEY=VALUE, not {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out
