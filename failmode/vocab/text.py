"""Text normalisation for vocabulary entries: cleaning, lemma keys, near-duplicate tests and phrasing.

Entries are compared by their *content tokens*: lower-cased words with articles, prepositions and filler words
removed and plurals reduced to the singular ("in the deserts" -> ["desert"]). The word lists live in
`lexicon.json` (data, not code).
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import unicodedata
from pathlib import Path
from typing import Any

from failmode.prompts import article

_LEXICON_PATH = Path(__file__).with_name("lexicon.json")
_WORD = re.compile(r"[a-z][a-z'\-]*")


@functools.cache
def lexicon() -> dict[str, Any]:
    """The word lists of `lexicon.json`."""
    return json.loads(_LEXICON_PATH.read_text(encoding="utf-8"))


@functools.cache
def _stopwords() -> frozenset[str]:
    lex = lexicon()
    return frozenset(lex["articles"]) | frozenset(lex["prepositions"]) | frozenset(lex["fillers"])


def clean(text: str) -> str:
    """Unicode-normalise, lower-case, drop markdown/quotes and trailing punctuation, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").lower()
    text = re.sub(r"[*_`\"“”]+", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" .,;:!?'-")


_IRREGULAR = {"mice": "mouse", "geese": "goose", "feet": "foot", "teeth": "tooth", "people": "person",
              "men": "man", "women": "woman", "children": "child", "leaves": "leaf", "wolves": "wolf",
              "shelves": "shelf", "knives": "knife", "lives": "life", "cacti": "cactus", "fungi": "fungus"}
_KEEP_S = ("ss", "us", "is", "ous", "ics", "news", "alps", "himalayas", "species", "series", "dunes")


def singular(word: str) -> str:
    """A rule-based singular form ("deserts" -> "desert", "cities" -> "city", "beaches" -> "beach")."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or not word.endswith("s") or word.endswith(_KEEP_S):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zzes", "sses")):
        return word[:-2]
    if word.endswith("oes") and len(word) > 5:
        return word[:-2]
    return word[:-1]


def words(text: str) -> list[str]:
    """The words of `text` after `clean`, in order (hyphenated words stay whole)."""
    return _WORD.findall(clean(text))


def content_tokens(text: str) -> list[str]:
    """Ordered singular content words: articles, prepositions and fillers removed."""
    stop = _stopwords()
    return [singular(w) for w in words(text) if w not in stop]


def norm_key(text: str) -> str:
    """The normalised identity of an entry: its sorted, de-duplicated content tokens joined by spaces."""
    return " ".join(sorted(set(content_tokens(text))))


def near_duplicate(a: str, b: str, ratio: float = 0.9) -> bool:
    """True when `a` and `b` name the same or a redundant context.

    Same token set; the same letters once spaces are dropped ("rain forest" / "rainforest"); a character
    similarity of at least `ratio` (typos); or one token set inside the other ("in a forest" / "in a dense
    forest", "on a mountain" / "on a mountain peak").
    """
    ta, tb = content_tokens(a), content_tokens(b)
    if not ta or not tb:
        return False
    sa, sb = set(ta), set(tb)
    if sa == sb or "".join(ta) == "".join(tb):
        return True
    if difflib.SequenceMatcher(None, " ".join(ta), " ".join(tb)).ratio() >= ratio:
        return True
    return sa <= sb or sb <= sa


def starts_with_prefix(text: str, prefixes: list[str]) -> bool:
    """True when cleaned `text` begins with one of the multi-word `prefixes` followed by more words."""
    text = clean(text)
    return any(text.startswith(p + " ") for p in prefixes)


def phrase_background(raw: str) -> str:
    """Phrase a raw place ("rain forests", "the desert") as a prepositional phrase ("in a rain forest")."""
    lex = lexicon()
    text = clean(raw)
    if starts_with_prefix(text, lex["background_prefixes"]):
        return text
    ws = words(text)
    while ws and ws[0] in lex["articles"]:
        ws = ws[1:]
    if not ws:
        return ""
    ws[-1] = singular(ws[-1])
    noun = " ".join(ws)
    head = ws[-1]
    prep = _preposition(ws)
    if noun in lex["unique_nouns"] or head in lex["unique_nouns"]:
        return f"{prep} the {noun}"
    if head in lex["uncountable"]:
        return f"{prep} {noun}"
    return f"{prep} {article(ws[0])} {noun}"


def _preposition(ws: list[str]) -> str:
    lex = lexicon()
    head = ws[-1]
    if head in ("lake", "pond", "river", "sea", "ocean") and set(ws) & set(lex["frozen_water_words"]):
        return "on"
    for prep, heads in lex["preposition_by_head"].items():
        if head in heads:
            return prep
    return "in"


def phrase_color(raw: str) -> str:
    """Phrase a raw colour ("Bright pink", "in neon green") as a clause ("that is bright pink")."""
    lex = lexicon()
    text = clean(raw)
    changed = True
    while changed:
        changed = False
        for lead in sorted(lex["color_lead_ins"], key=len, reverse=True):
            if text.startswith(lead + " "):
                text = text[len(lead) + 1:].strip()
                changed = True
    return f"{lex['color_prefix']} {text}" if text else ""


def has_color_word(text: str) -> bool:
    """True when `text` names at least one colour or colour pattern."""
    colors = set(lexicon()["color_words"])
    return any(w in colors or w.split("-")[0] in colors for w in words(text))
