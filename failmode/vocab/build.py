"""Regenerate a vocabulary with an LLM behind any OpenAI-compatible endpoint (`failmode vocab build`).

Per class: ask for the class's *common* contexts (to filter them out), then ask the paper's question ("What are
the uncommon backgrounds that a {class} can appear in?") in rounds -- round 0 greedy, later rounds sampled with
new seeds -- until the class has `min_contexts` accepted entries or the rounds run out. Every answer is parsed
(`parse.parse_list`), phrased for the template (`kinds`), and vetted: entries that restate the class, name one of
its common contexts, are generic, or near-duplicate an accepted entry are rejected with a reason.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from failmode.errors import FailmodeError, UsageError
from failmode.progress import bar
from failmode.vocab import text
from failmode.vocab.classnames import ClassInfo, class_infos
from failmode.vocab.kinds import Kind, get_kind
from failmode.vocab.llm import ChatClient, StructuredOutputUnsupported
from failmode.vocab.parse import parse_list
from failmode.vocab.vocabulary import DEFAULT_TEMPLATE, MAX_CONTEXTS, MIN_CONTEXTS, VocabClass, Vocabulary

log = logging.getLogger(__name__)

_PROMPTS_PATH = Path(__file__).with_name("prompts.json")
_MAX_TOKENS_PER_ITEM = 12
_MAX_CONTENT_TOKENS = 5
_PHRASE_CHARS = re.compile(r"^[a-z][a-z '\-]*$")


@functools.cache
def prompts(kind: str) -> dict[str, Any]:
    """The prompt set of `kind` from `prompts.json`."""
    data = json.loads(_PROMPTS_PATH.read_text(encoding="utf-8"))
    if kind not in data:
        raise UsageError(f"no prompts for vocabulary kind {kind!r} (known: {', '.join(k for k in data if k[0] != '_')})")
    return data[kind]


@dataclass
class BuildConfig:
    """Settings of one vocabulary build."""

    dataset: str
    kind: str = "background"
    min_contexts: int = MIN_CONTEXTS
    max_contexts: int = MAX_CONTEXTS
    rounds: int = 4
    temperature: float = 0.8
    seed: int = 0
    max_tokens: int = 0  # 0: derived from max_contexts
    concurrency: int = 4
    structured: bool = False
    use_common: bool = True
    embedding_model: str | None = None
    embedding_threshold: float = 0.92
    version: str = "0.1.0"

    def __post_init__(self) -> None:
        if not 1 <= self.min_contexts <= self.max_contexts:
            raise UsageError(f"need 1 <= --min-contexts <= --max-contexts, got {self.min_contexts} and {self.max_contexts}")
        if self.rounds < 1 or self.concurrency < 1:
            raise UsageError("--rounds and --concurrency must be at least 1")
        self.max_tokens = self.max_tokens or _MAX_TOKENS_PER_ITEM * (self.max_contexts + 2)


@dataclass
class ClassResult:
    """What the build produced for one class: accepted contexts, rejected candidates with reasons, requests made."""

    info: ClassInfo
    contexts: list[str]
    rejected: dict[str, str] = field(default_factory=dict)
    rounds: int = 0
    common: list[str] = field(default_factory=list)


@dataclass
class BuildReport:
    """The built vocabulary, per-class results, the classes below the minimum, and request/cache counts."""

    vocabulary: Vocabulary | None
    results: list[ClassResult]
    min_contexts: int
    requests: int
    cache_hits: int
    max_contexts: int = 12

    @property
    def short(self) -> list[ClassResult]:
        """Classes that ended with fewer than `min_contexts` contexts."""
        return [r for r in self.results if len(r.contexts) < self.min_contexts]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Check the built vocabulary (classes that got no context may be missing) and write it to `path`."""
        from failmode.vocab.vocabulary import validate

        if self.vocabulary is None:
            raise FailmodeError("no vocabulary was built: no class received a usable context")
        self.vocabulary.source = str(path)
        validate(self.vocabulary, min_contexts=1, max_contexts=self.max_contexts, complete=False)
        self.vocabulary.save(path)
        return Path(path)

    def summary(self) -> str:
        """A human-readable report: totals, then one line per class that fell short."""
        n = len(self.results)
        lines = [f"{n - len(self.short)}/{n} classes reached {self.min_contexts} contexts; "
                 f"{self.requests} requests, {self.cache_hits} cache hits"]
        for r in self.short:
            reasons = _reason_counts(r.rejected)
            lines.append(f"  short: class {r.info.index} {r.info.name!r}: {len(r.contexts)} contexts after "
                         f"{r.rounds} rounds (rejected: {reasons or 'none'})")
        return "\n".join(lines)


def _reason_counts(rejected: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for reason in rejected.values():
        key = reason.split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def resolve_classes(dataset: str, specs: list[str] | None, infos: list[ClassInfo] | None = None) -> list[ClassInfo]:
    """The classes named by `specs` (indices or names, comma-separated allowed); all classes when None."""
    infos = list(infos if infos is not None else class_infos(dataset))
    if not specs:
        return infos
    out: list[ClassInfo] = []
    for spec in (s.strip() for arg in specs for s in arg.split(",")):
        if not spec:
            continue
        if spec.isdigit():
            if int(spec) >= len(infos):
                raise UsageError(f"class index {spec} out of range for {dataset} ({len(infos)} classes)")
            match = [infos[int(spec)]]
        else:
            match = [c for c in infos if spec in (c.name, c.prompt_name)]
            if not match:
                raise UsageError(f"unknown class {spec!r} for {dataset}")
            if len(match) > 1:
                raise UsageError(f"class name {spec!r} is ambiguous in {dataset} (indices "
                                 f"{', '.join(str(c.index) for c in match)}); pass an index")
        out.extend(c for c in match if c not in out)
    return sorted(out, key=lambda c: c.index)


def subject(info: ClassInfo) -> str:
    """How the class is named in the LLM prompt: its prompt name, with the gloss where one is known."""
    return f"{info.prompt_name} ({info.gloss})" if info.gloss else info.prompt_name


class VocabularyBuilder:
    """Runs the per-class question rounds through a ChatClient and assembles the vocabulary."""

    def __init__(self, config: BuildConfig, client: ChatClient) -> None:
        self.config = config
        self.client = client
        self.kind: Kind = get_kind(config.kind)
        self.prompts = prompts(config.kind)
        self._structured = config.structured

    # -- requests -------------------------------------------------------------------------------------------
    def _messages(self, info: ClassInfo, common: bool) -> list[dict[str, str]]:
        p = self.prompts
        q, instr, examples = (("common_question", "common_instruction", "common_examples") if common
                              else ("question", "instruction", "examples"))
        n = self.config.max_contexts
        msgs = [{"role": "system", "content": p["system"]}]
        for ex in p[examples]:
            msgs.append({"role": "user", "content": f"{p[q].format(subject=ex['subject'])} {p[instr].format(n=n)}"})
            msgs.append({"role": "assistant", "content": "\n".join(f"{i}. {a}" for i, a in enumerate(ex["answer"], 1))})
        msgs.append({"role": "user", "content": f"{p[q].format(subject=subject(info))} {p[instr].format(n=n)}"})
        return msgs

    def _request(self, info: ClassInfo, round_: int, common: bool = False) -> dict[str, Any]:
        cfg = self.config
        req: dict[str, Any] = {"messages": self._messages(info, common), "max_tokens": cfg.max_tokens,
                               "temperature": 0.0 if round_ == 0 else cfg.temperature, "seed": cfg.seed + round_}
        if self._structured and not common:
            key = self.prompts["json_key"]
            schema = {"type": "object", "required": [key], "properties": {key: {
                "type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": cfg.max_contexts}}}
            req["response_format"] = {"type": "json_schema", "json_schema": {"name": key, "schema": schema}}
        return req

    def _ask(self, info: ClassInfo, round_: int, common: bool = False) -> list[str]:
        try:
            completion = self.client.complete(self._request(info, round_, common))
        except StructuredOutputUnsupported as e:
            if self._structured:
                log.warning("%s; falling back to free-text answers", e)
            self._structured = False
            completion = self.client.complete(self._request(info, round_, common))
        items = parse_list(completion.text)
        if completion.finish_reason == "length" and items:
            items = items[:-1]  # the last item was cut off by max_tokens
        return items

    # -- vetting --------------------------------------------------------------------------------------------
    def _class_tokens(self, info: ClassInfo) -> set[str]:
        names = {info.name, info.prompt_name, *info.synonyms}
        return {t for n in names for t in text.content_tokens(n.replace("_", " "))}

    def judge(self, entry: str, info: ClassInfo, common: list[str], accepted: list[str]) -> str | None:
        """Why `entry` is rejected for class `info`, or None to accept it."""
        tokens = text.content_tokens(entry)
        generic = set(text.lexicon()["generic_words"])
        if not entry or not tokens:
            return "no content words"
        if not self.kind.is_phrased(entry) or not _PHRASE_CHARS.match(entry):
            return "not a phrase"
        if len(tokens) > _MAX_CONTENT_TOKENS:
            return "too long"
        if len(set(tokens)) < len(tokens):
            return "repeats a word"
        if all(t in generic for t in tokens) or set(tokens) & set(text.lexicon()["junk_words"]):
            return "generic"
        if set(tokens) & self._class_tokens(info):
            return "restates the class"
        if (why := self.kind.extra_check(entry)) is not None:
            return why
        if (hit := self._common_hit(entry, tokens, common)) is not None:
            return f"common context ({hit})"
        for prev in accepted:
            if text.near_duplicate(entry, prev):
                return f"duplicate ({prev})"
        return None

    def _common_hit(self, entry: str, tokens: list[str], common: list[str]) -> str | None:
        colors = set(text.lexicon()["color_words"])
        for c in common:
            ct = text.content_tokens(c)
            if not ct:
                continue
            if self.kind.name == "color":
                if {t for t in tokens if t in colors} & {t for t in ct if t in colors} - {"neon", "pastel", "metallic"}:
                    return c
            elif ct[-1] == tokens[-1] or text.near_duplicate(entry, c):
                return c
        return None

    # -- per class ------------------------------------------------------------------------------------------
    def build_class(self, info: ClassInfo) -> ClassResult:
        """Run the rounds for one class and return its accepted and rejected entries."""
        cfg = self.config
        result = ClassResult(info, [], common=self._common(info) if cfg.use_common else [])
        for round_ in range(cfg.rounds):
            result.rounds = round_ + 1
            for raw in self._ask(info, round_):
                entry = self.kind.phrase(raw)
                if entry in result.contexts or entry in result.rejected:
                    continue
                reason = self.judge(entry, info, result.common, result.contexts)
                if reason is None:
                    result.contexts.append(entry)
                else:
                    result.rejected.setdefault(entry or raw, reason)
            if len(result.contexts) >= cfg.min_contexts:
                break
        if cfg.embedding_model and len(result.contexts) > 1:
            self._embedding_dedupe(result)
        del result.contexts[cfg.max_contexts:]
        return result

    def _common(self, info: ClassInfo) -> list[str]:
        """The class's common contexts, phrased; answers copied from the few-shot example are dropped."""
        copied = {self.kind.phrase(a) for ex in self.prompts["common_examples"] for a in ex["answer"]}
        phrased = (self.kind.phrase(x) for x in self._ask(info, 0, common=True))
        return [c for c in phrased if c and c not in copied]

    def _embedding_dedupe(self, result: ClassResult) -> None:
        vectors = self.client.embed(result.contexts, self.config.embedding_model or "")
        kept: list[int] = []
        for i, v in enumerate(vectors):
            dup = next((j for j in kept if _cosine(v, vectors[j]) >= self.config.embedding_threshold), None)
            if dup is None:
                kept.append(i)
            else:
                result.rejected[result.contexts[i]] = f"semantic duplicate ({result.contexts[dup]})"
        result.contexts = [result.contexts[i] for i in kept]

    # -- whole vocabulary -----------------------------------------------------------------------------------
    def run(self, classes: list[ClassInfo]) -> BuildReport:
        """Build every class (concurrently) and assemble the vocabulary of the classes that got contexts."""
        results: dict[int, ClassResult] = {}
        with bar(f"vocab {self.config.dataset}/{self.config.kind}", total=len(classes), unit="class") as b, \
                ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            for res in pool.map(self.build_class, classes):
                results[res.info.index] = res
                b.update(1)
        ordered = [results[c.index] for c in classes]
        vocab = self._vocabulary(ordered) if any(r.contexts for r in ordered) else None
        return BuildReport(vocab, ordered, self.config.min_contexts, self.client.stats.requests,
                           self.client.stats.cache_hits, self.config.max_contexts)

    def _vocabulary(self, results: list[ClassResult]) -> Vocabulary:
        classes = [VocabClass(r.info.index, r.info.name, r.info.prompt_name, r.contexts, r.info.id)
                   for r in results if r.contexts]
        return Vocabulary(self.config.dataset, self.config.kind, self.config.version, DEFAULT_TEMPLATE,
                          self._provenance(results), classes)

    def _provenance(self, results: list[ClassResult]) -> dict[str, Any]:
        cfg, p = self.config, self.prompts
        short = [r for r in results if len(r.contexts) < cfg.min_contexts]
        host = urlsplit(self.client.endpoint).netloc
        return {
            "generator": f"failmode vocab build: model {self.client.model!r} at an OpenAI-compatible endpoint "
                         f"({host}) through the openai client",
            "prompt": f"{p['question']} {p['instruction']}".replace("{subject}", "{class_name}").replace(
                "{n}", str(cfg.max_contexts)),
            "date": _dt.date.today().isoformat(),
            "post_processing": [
                "parsed numbered/bulleted/comma-separated/JSON/prose answers into items",
                "phrased items for the template ('in/on/at ...' for backgrounds, 'that is ...' for colors)",
                "rejected entries that restate the class, are generic, or match the class's common contexts "
                "(asked separately)" if cfg.use_common else "rejected entries that restate the class or are generic",
                "removed exact, near-exact and semantic near-duplicates (token sets, singular forms, head nouns"
                + (f", embedding cosine >= {cfg.embedding_threshold}" if cfg.embedding_model else "") + ")",
                f"kept at most {cfg.max_contexts} entries per class",
            ],
            "settings": {"rounds": cfg.rounds, "temperature": cfg.temperature, "seed": cfg.seed,
                         "max_tokens": cfg.max_tokens, "structured": cfg.structured, "min_contexts": cfg.min_contexts,
                         "max_contexts": cfg.max_contexts},
            "notes": (f"{len(short)} of {len(results)} classes fell short of {cfg.min_contexts} contexts: "
                      + ", ".join(f"{r.info.index} {r.info.name} ({len(r.contexts)})" for r in short)
                      if short else f"all {len(results)} classes reached {cfg.min_contexts} contexts"),
        }


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


def build_vocabulary(config: BuildConfig, client: ChatClient, classes: list[ClassInfo] | None = None) -> BuildReport:
    """Build a vocabulary for `classes` (default: every class of `config.dataset`) through `client`."""
    classes = classes if classes is not None else list(class_infos(config.dataset))
    if not classes:
        raise UsageError("no classes to build")
    report = VocabularyBuilder(config, client).run(classes)
    if report.vocabulary is None:
        rejected: dict[str, str] = {}
        for r in report.results:
            rejected.update(r.rejected)
        why = f"every candidate was rejected: {_reason_counts(rejected)}" if rejected else "the answers held no list"
        raise FailmodeError(f"no class received any usable context from {client.endpoint} "
                            f"({report.requests} requests; {why})")
    return report
