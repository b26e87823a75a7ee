"""Per-class "uncommon context" vocabularies: shipped data files, loading, validation and LLM regeneration.

    from failmode.vocab import load_vocabulary
    vocab = load_vocabulary("cifar10")                  # shipped; or a path to a vocabulary JSON
    vocab.prompt(3, vocab.contexts(3)[0])               # 'a photo of a cat in a snowy forest'

`failmode vocab build` regenerates a vocabulary through any OpenAI-compatible endpoint (`failmode.vocab.build`).
"""

from failmode.vocab.vocabulary import (
    FORMAT,
    VocabClass,
    Vocabulary,
    from_dict,
    load_vocabulary,
    shipped_path,
    shipped_vocabularies,
    validate,
)

__all__ = [
    "FORMAT",
    "VocabClass",
    "Vocabulary",
    "from_dict",
    "load_vocabulary",
    "shipped_path",
    "shipped_vocabularies",
    "validate",
]
