"""Turn whatever list an LLM returns into a list of short items.

Handles JSON (a list, or an object holding one), numbered and bulleted lines, markdown bold, "item: explanation"
and "item - explanation" lines, comma/semicolon-separated lists and prose ("... such as deserts, caves and
glaciers."). Items are returned cleaned, in order, without exact duplicates; judging them is left to the caller.
"""

from __future__ import annotations

import json
import re
from typing import Any

from failmode.vocab.text import clean

MAX_ITEM_WORDS = 8
_BULLET = re.compile(r"^\s*(?:[-*+\u2022\u00b7>]+|\(?\d{1,3}\s*[.)\]:-]|\(?[a-z][.)])\s*", re.IGNORECASE)
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_EXPLANATION = re.compile(r"\s+(?:-|\u2013|\u2014)\s+|:\s+|\s*\(|\s*\[")
_SPLIT = re.compile(r"\s*(?:,|;|/|\band\b|\bor\b)\s*")
_LEAD_IN = re.compile(r"^.*?\b(?:such as|like|including|include|includes|are|is|be|in|:)\s+", re.IGNORECASE)
_LIST_KEYS = ("contexts", "backgrounds", "colors", "colours", "items", "answers", "list", "places")


def parse_list(text: str) -> list[str]:
    """Items of the list in `text` (JSON, lines, comma-separated or prose), cleaned and de-duplicated."""
    items = _from_json(text)
    if items is None:
        items = _from_lines(text)
    out: list[str] = []
    for item in items:
        item = clean(item)
        if item and len(item.split()) <= MAX_ITEM_WORDS and item not in out:
            out.append(item)
    return out


def _from_json(text: str) -> list[str] | None:
    for opener, closer in (("[", "]"), ("{", "}")):
        start, end = text.find(opener), text.rfind(closer)
        if start == -1 or end <= start:
            continue
        try:
            data = json.loads(text[start:end + 1])
        except json.JSONDecodeError:
            continue
        items = _strings_in(data)
        if items:
            return items
    return None


def _strings_in(data: Any) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, list):
        return [s for x in data for s in _strings_in(x)]
    if isinstance(data, dict):
        for key in _LIST_KEYS:
            if key in data:
                return _strings_in(data[key])
        for key in ("name", "background", "context", "color", "colour", "place"):
            if isinstance(data.get(key), str):
                return [data[key]]
        lists = [v for v in data.values() if isinstance(v, list)]
        return _strings_in(lists[0]) if lists else []
    return []


def _from_lines(text: str) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    listed = [ln for ln in lines if _BULLET.match(ln)]
    if len(listed) >= 2:
        return [_item_of_line(ln) for ln in listed]
    items = []
    for line in lines:
        if line.rstrip().endswith(":") and len(lines) > 1:
            continue  # an intro such as "Here are some uncommon backgrounds:"
        items.extend(_split_prose(line))
    return items


def _item_of_line(line: str) -> str:
    line = _BULLET.sub("", line, count=1)
    bold = _BOLD.search(line)
    if bold:
        return bold.group(1)
    return _EXPLANATION.split(line, maxsplit=1)[0]


def _split_prose(line: str) -> list[str]:
    line = re.split(r"(?<=[a-z])[.!?](?:\s|$)", line.strip())[0]
    parts = [p for p in _SPLIT.split(line) if p.strip()]
    if parts and len(parts[0].split()) > 3:
        parts[0] = _LEAD_IN.sub("", parts[0], count=1)
    return [_EXPLANATION.split(p, maxsplit=1)[0] for p in parts]
