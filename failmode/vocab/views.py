"""Human-readable views of vocabularies: a summary/listing (`failmode vocab show`) and a diff of two versions."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from failmode.vocab import text
from failmode.vocab.vocabulary import Vocabulary


def describe(vocab: Vocabulary, labels: list[int] | None = None, show_prompts: bool = False) -> str:
    """Header (dataset, kind, version, provenance, counts) and one block per class (all, or `labels`)."""
    counts = [len(c.contexts) for c in vocab.classes]
    prov = vocab.provenance
    lines = [
        f"{vocab.dataset} / {vocab.kind}  version {vocab.version}  ({vocab.source})",
        f"template: {vocab.template}",
        f"generator: {prov.get('generator', '?')}",
        f"prompt: {prov.get('prompt', '?')}",
        f"date: {prov.get('date', '?')}",
        f"classes: {len(counts)}; contexts per class: min {min(counts)}, median {statistics.median(counts):g}, "
        f"max {max(counts)}; total {sum(counts)}",
    ]
    for c in vocab.classes:
        if labels is not None and c.index not in labels:
            continue
        head = f"[{c.index}] {c.name}" + (f" (prompt: {c.prompt_name})" if c.prompt_name != c.name else "")
        lines.append(head + (f" {c.id}" if c.id else ""))
        for ctx in c.contexts:
            lines.append(f"    {vocab.prompt(c.index, ctx) if show_prompts else ctx}")
    return "\n".join(lines)


@dataclass
class ClassDiff:
    """Changes to one class between two vocabularies; `reworded` pairs share a normalised key."""

    index: int
    name: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reworded: list[tuple[str, str]] = field(default_factory=list)
    renamed: tuple[str, str] | None = None

    @property
    def changed(self) -> bool:
        """True when anything differs."""
        return bool(self.added or self.removed or self.reworded or self.renamed)


@dataclass
class VocabDiff:
    """Differences between vocabulary `a` and `b`: header fields, classes only in one, per-class changes."""

    header: list[tuple[str, str, str]]
    only_a: list[int]
    only_b: list[int]
    classes: list[ClassDiff]

    @property
    def identical(self) -> bool:
        """True when nothing differs."""
        return not (self.header or self.only_a or self.only_b or any(c.changed for c in self.classes))


def diff_vocabularies(a: Vocabulary, b: Vocabulary) -> VocabDiff:
    """Compare two vocabularies class by class (by label index); rewordings are matched by normalised key."""
    header = [(k, str(getattr(a, k)), str(getattr(b, k))) for k in ("dataset", "kind", "version", "template")
              if getattr(a, k) != getattr(b, k)]
    for k in ("generator", "date", "prompt"):
        if a.provenance.get(k) != b.provenance.get(k):
            header.append((f"provenance.{k}", str(a.provenance.get(k)), str(b.provenance.get(k))))
    ia, ib = set(a.indices), set(b.indices)
    classes = [_class_diff(a, b, i) for i in sorted(ia & ib)]
    return VocabDiff(header, sorted(ia - ib), sorted(ib - ia), [c for c in classes if c.changed])


def _class_diff(a: Vocabulary, b: Vocabulary, index: int) -> ClassDiff:
    ca, cb = a.get(index), b.get(index)
    d = ClassDiff(index, cb.name)
    if ca.name != cb.name:
        d.renamed = (ca.name, cb.name)
    keys_a = {text.norm_key(x): x for x in ca.contexts}
    keys_b = {text.norm_key(x): x for x in cb.contexts}
    d.removed = [x for k, x in keys_a.items() if k not in keys_b]
    d.added = [x for k, x in keys_b.items() if k not in keys_a]
    d.reworded = [(keys_a[k], keys_b[k]) for k in keys_a if k in keys_b and keys_a[k] != keys_b[k]]
    return d


def format_diff(diff: VocabDiff, a_name: str, b_name: str) -> str:
    """A unified-diff-like text of `diff` ('-' only in a, '+' only in b, '~' reworded)."""
    if diff.identical:
        return f"{a_name} and {b_name}: no differences"
    lines = [f"--- {a_name}", f"+++ {b_name}"]
    lines += [f"{k}: {va!r} -> {vb!r}" for k, va, vb in diff.header]
    lines += [f"- class {i} (only in {a_name})" for i in diff.only_a]
    lines += [f"+ class {i} (only in {b_name})" for i in diff.only_b]
    for c in diff.classes:
        lines.append(f"[{c.index}] {c.name}" + (f" (renamed from {c.renamed[0]!r})" if c.renamed else ""))
        lines += [f"  - {x}" for x in c.removed] + [f"  + {x}" for x in c.added]
        lines += [f"  ~ {x} -> {y}" for x, y in c.reworded]
    added = sum(len(c.added) for c in diff.classes)
    removed = sum(len(c.removed) for c in diff.classes)
    lines.append(f"{len(diff.classes)} classes changed: +{added} -{removed} ~{sum(len(c.reworded) for c in diff.classes)}")
    return "\n".join(lines)
