"""Filling prompt templates such as "a photo of a {class_name} {context}" into readable English."""

from __future__ import annotations

import re

# Words starting with a vowel letter but a consonant sound take "a" ("a unicycle", "a utility room",
# "a one-piece swimsuit"), and a silent h takes "an" ("an hourglass").
_CONSONANT_SOUND = re.compile(r"^(uni|use|usu|uti|uk|eu|ewe|one|once|ufo)", re.IGNORECASE)
_VOWEL_SOUND = re.compile(r"^(hour|honest|honou?r|heir)", re.IGNORECASE)


def article(word: str) -> str:
    """The indefinite article for `word`: "an" before a vowel sound, else "a"."""
    if _VOWEL_SOUND.match(word):
        return "an"
    if word[:1].lower() in "aeiou" and not _CONSONANT_SOUND.match(word):
        return "an"
    return "a"


def fill_template(template: str, class_name: str, context: str | None = "") -> str:
    """Fill `{class_name}` and `{context}`, fix "a" before a vowel sound ("an apple"), and collapse whitespace."""
    text = template.format(class_name=class_name, context=context or "")
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\b([Aa]) (\w[\w-]*)", lambda m: _with_article(m.group(1), m.group(2)), text)


def _with_article(a: str, word: str) -> str:
    art = article(word)
    return f"{art.capitalize() if a == 'A' else art} {word}"
