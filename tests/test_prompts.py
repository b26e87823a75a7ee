"""Prompt templates read as English: "an apple", "a unicycle", no doubled spaces."""

from __future__ import annotations

import pytest

from failmode.prompts import article, fill_template
from failmode.vocab import load_vocabulary

T = "a photo of a {class_name} {context}"


@pytest.mark.parametrize(("word", "expected"), [
    ("apple", "an"), ("aquarium fish", "an"), ("orange", "an"), ("unicycle", "a"), ("one-piece swimsuit", "a"),
    ("European fire salamander", "a"), ("hourglass", "an"), ("cat", "a"), ("umbrella", "an"),
    ("utility room", "a"), ("ufo", "a"), ("ukulele", "a"),
])
def test_article(word, expected):
    assert article(word) == expected


def test_fill_template_fixes_articles_and_spaces():
    assert fill_template(T, "apple", "in a desert") == "a photo of an apple in a desert"
    assert fill_template(T, "apple", "") == "a photo of an apple"
    assert fill_template(T, "cat", "on an iceberg") == "a photo of a cat on an iceberg"
    assert fill_template("A {class_name}", "owl") == "An owl"
    assert fill_template(T, "cat", "in a utility room") == "a photo of a cat in a utility room"


def test_vocabulary_prompts_use_it():
    vocab = load_vocabulary("cifar100")
    fish = next(c for c in vocab.classes if c.name == "aquarium_fish")
    assert vocab.prompt(fish.index, None) == "a photo of an aquarium fish"
