"""The sample plan: one row per image (prompt, negative prompt, seed, guidance, steps, size, generator), written
before rendering so any shard can be regenerated bit for bit.

Order and shards (ORDER_RULE, SHARD_RULE): a config's images are interleaved, not sorted by label, so every shard
and every prefix holds each class (and each context of a class) in proportion; a config is cut into `shard_count`
shards of equal size (within one sample), a multiple of 8 where it has enough images, so loaders that give each
worker whole shards (timm's `wds/` reader, `webdataset.WebLoader`) split it evenly over 1, 2, 4 or 8 workers.

Seeds are derived, not drawn: the seed of an image is a hash of (base seed, config, label, context kind, context,
replica), so adding a class or a config never changes the seeds of the others. A sample that must be replaced
(quality filter, safety checker) takes the next seed of its own reserve chain (`attempt_seed`).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from failmode.backends import GenerationRequest
from failmode.dataset import layout
from failmode.errors import ValidationError
from failmode.io import atomic_path, read_json, sha256_file
from failmode.options import BUDGET_POLICIES
from failmode.prompts import fill_template
from failmode.typed import bounded, check_ranges, labelled_entry

log = logging.getLogger(__name__)

SEED_MASK = (1 << 63) - 1
SEED_RULE = ("seed = first 8 bytes (big-endian) of sha256('{base_seed}|{config}|{label}|{context_kind}|{context}|"
             "{replica}') & (2**63-1); reserve attempt a>0 uses sha256('{seed}|reserve|{a}') the same way")
BASELINE_KIND = "class-only"
#: the random-context baseline's config name, role and source (its seed stream tag: RANDOM_CONTEXT_STREAM)
RANDOM_CONTEXT = "random-context"
RANDOM_CONTEXT_STREAM = 11
#: shard counts are a multiple of SHARD_MULTIPLE (or of the largest power of two below it that keeps
#: MIN_SHARD_SAMPLES per shard), so common loader worker counts divide them
SHARD_MULTIPLE = 8
MIN_SHARD_SAMPLES = 16
SHARD_RULE = (f"num_shards = m * ceil(n / (m * shard_size)) for a config of n images, where m is the largest of "
              f"{SHARD_MULTIPLE}, 4, 2, 1 with n >= m * {MIN_SHARD_SAMPLES}; shard i holds positions "
              "floor(i*n/num_shards) .. floor((i+1)*n/num_shards)-1 of the config's order")
ORDER_RULE = ("within a config, each class's images are interleaved over its contexts, then the classes over the "
              "config: item j of a group of g items (a context's images in replica order; a class's interleaved "
              "images) gets the key (j + u)/g, u uniform in [0, 1) from numpy's default_rng([order seed, 1 + label]) "
              "for a class's contexts and default_rng([order seed, 0]) for the classes, order seed = the seed rule's "
              "hash of '{base_seed}|{config}|order'; items are sorted by (key, group rank, j)")
ORDER_STREAM = "order"
DEFAULT_TEMPLATES = {
    "background": "a photo of a {class_name} {context}",
    "color": "a photo of a {class_name} {context}",
    BASELINE_KIND: "a photo of a {class_name}",
}
#: the paper's rule: k images_per_mode images on each of the k most frequent attributed contexts
#: spread the same per-class total over the vocabulary by the attributed seed failures (EVIDENCE_RULE)
TOP_K, EVIDENCE_WEIGHTED = BUDGET_POLICIES
EVIDENCE_RULE = (
    "per class: n = seed-failure counts of the m vocabulary contexts (attributed context, seed half only), ranked by "
    "count then vocabulary order; B = the class's top-k images; model s (s = 1..m-1): a share 1-e of failures spread "
    "equally over the top-s contexts, e over the others (e ~ Uniform(0, 1)), model m: flat; prior uniform over s and "
    "over the C(m, s) subsets of size s; p = the posterior-weighted mean of each model's predictive probabilities; "
    "x = argmax sum_j p_j (1 - exp(-x_j / tau)) subject to sum x = B, tau = images_per_mode / 2 (water-filling: "
    "x_j = tau ln(p_j / lambda)+); integers by largest remainder (ties: larger p, then vocabulary order)")


@dataclass(frozen=True)
class GenerationSettings:
    """How images are made: generator, sampler, sizes, counts, seeds and sharding (the `generation` of a preset)."""

    generator: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    revision: str | None = None
    scheduler: str = "dpmsolver++"
    steps: int = bounded(25, 1, 1000)
    guidance: float = bounded(7.5, 0, 100)
    size: int = bounded(512, 8, 4096)
    negative_prompt: str = ""
    images_per_mode: int = bounded(5, 1, 10_000)
    k: int = bounded(3, 1, 100)
    base_seed: int = 0
    shard_size: int = bounded(1000, 1, 100_000)
    split: str = "train"
    prompt_templates: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    #: budget policies of the per-model configs (BUDGET_POLICIES): the first makes `<model>`, each further one the
    #: sibling `<model>-<policy>` (`policy_config`)
    budget: tuple[str, ...] = (TOP_K,)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "generation settings") -> GenerationSettings:
        """Build from a preset's `generation` section; unknown keys or wrong types raise ValidationError naming them."""
        from failmode.typed import from_mapping

        out = from_mapping(cls, data, where)
        templates = {**DEFAULT_TEMPLATES, **out.prompt_templates}
        return replace(out, prompt_templates=templates, budget=tuple(out.budget)).check(where)

    def check(self, where: str = "generation settings") -> GenerationSettings:
        """Raise ValidationError on impossible values; return self."""
        check_ranges(self, where)  # the documented ranges (docs/settings.md); NaN and infinities refused
        if self.size % 8:
            raise ValidationError(f"{where}: size must be a multiple of 8 (the VAE's downsampling), got {self.size}")
        layout.check_split_name(self.split)
        check_budget(self.budget, where)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (recorded in the manifest); `budget` is left out when it is the default top-k alone, so a
        dataset built with the paper's rule keeps the manifest bytes it had before the policies existed."""
        out = asdict(self)
        if tuple(self.budget) == (TOP_K,):
            del out["budget"]
        else:
            out["budget"] = list(self.budget)
        return out


@dataclass(frozen=True)
class ModeSet:
    """The classes and contexts one config renders: a model's failure modes, a family's, or the baseline."""

    config: str
    role: str  # "model" | "collective" | "baseline" | "random-context" (written as the manifest's config `kind`)
    source_model: str  # classifier id, "collective:<family>" or "baseline"
    context_kind: str  # "background", "color", ... or "class-only"
    classes: tuple[ClassModes, ...]
    policy: str = TOP_K  # the budget policy that spread a model config's images (BUDGET_POLICIES)


@dataclass(frozen=True)
class ClassModes:
    """One class and its contexts in rank order (empty for the class-only baseline).

    `counts`, when given, is the number of images of each context (the random-context baseline); otherwise every
    one of the first k contexts gets `images_per_mode` images. `prompts`, when given, is each context's own
    prompt (a slice's description, a discovered bug's prompt) instead of the context kind's template.
    """

    label: int
    class_name: str
    prompt_name: str
    contexts: tuple[str, ...] = ()
    counts: tuple[int, ...] = ()
    prompts: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlanRow:
    """One image of the plan: where it goes (config/split/shard/position) and everything needed to render it."""

    config: str
    split: str
    shard_index: int
    num_shards: int
    position: int
    source_model: str
    label: int
    class_name: str
    context: str
    context_kind: str
    replica: int
    prompt: str
    negative_prompt: str
    seed: int
    guidance_scale: float
    num_inference_steps: int
    height: int
    width: int
    generator: str

    def request(self, attempt: int = 0) -> GenerationRequest:
        """The render request for this row at reserve `attempt` (0 = the planned seed)."""
        return GenerationRequest(
            prompt=self.prompt, seed=attempt_seed(self.seed, attempt), label=self.label, class_name=self.class_name,
            context=self.context, context_kind=self.context_kind, negative_prompt=self.negative_prompt,
            guidance_scale=self.guidance_scale, num_inference_steps=self.num_inference_steps,
            height=self.height, width=self.width,
        )


PLAN_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(PlanRow))


def hash_seed(*parts: Any) -> int:
    """A seed from its parts: the first 8 bytes of sha256('|'.join(parts)), masked to 63 bits."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") & SEED_MASK


def derive_seed(base_seed: int, config: str, label: int, context_kind: str, context: str, replica: int) -> int:
    """The planned seed of one image (see SEED_RULE)."""
    return hash_seed(base_seed, config, label, context_kind, context, replica)


def attempt_seed(seed: int, attempt: int) -> int:
    """Seed of reserve `attempt` of a planned seed; attempt 0 is the planned seed itself."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    return seed if attempt == 0 else hash_seed(seed, "reserve", attempt)


def modes_from_json(data: Any, *, config: str | None = None, k: int, role: str = "model",
                    source_model: str | None = None, where: str = "modes.json", allow_empty: bool = False) -> ModeSet:
    """A ModeSet from a `failmode-modes/1` document, keeping the top `k` contexts of each class.

    The structure is checked strictly (one line naming the file and class): an object with a `classes` list
    (non-empty unless `allow_empty`: a model without seed failures), integer labels >= 0 without repeats, string
    class names and non-empty string contexts. Whether labels, names and contexts belong to the dataset is
    `check_mode_set`'s job (it needs the vocabulary). `config` defaults to the slug of the source model."""
    if not isinstance(data, Mapping):
        raise ValidationError(f"{where}: expected a JSON object (a failmode-modes/1 file), got {type(data).__name__}")
    if data.get("format") != "failmode-modes/1":
        raise ValidationError(f"{where}: not a failmode-modes/1 file (format {data.get('format')!r})")
    entries = data.get("classes")
    if not isinstance(entries, list) or not (entries or allow_empty):
        raise ValidationError(f"{where}: 'classes' must be a non-empty list of classes")
    classes, seen = [], set()
    for pos, c in enumerate(entries):
        at = f"{where}: classes[{pos}]"
        label, name = labelled_entry(c, at, "label", "class_name")
        if label in seen:
            raise ValidationError(f"{at}: label {label} is listed twice")
        seen.add(label)
        modes = c.get("modes", [])
        if not isinstance(modes, list):
            raise ValidationError(f"{at}: 'modes' must be a list")
        contexts = []
        for j, m in enumerate(modes[:k]):
            ctx = m.get("context") if isinstance(m, Mapping) else None
            if not isinstance(ctx, str) or not ctx.strip():
                raise ValidationError(f"{at}.modes[{j}]: context must be a non-empty string, not {ctx!r}")
            contexts.append(ctx)
        prompt = c.get("prompt_name") or name
        classes.append(ClassModes(label, name, str(prompt), tuple(contexts)))
    vocabulary = data.get("vocabulary") or {}
    context_kind = str(vocabulary.get("kind") or "background") if isinstance(vocabulary, Mapping) else "background"
    source = source_model or data.get("source_model")
    if not isinstance(source, str) or not source:
        raise ValidationError(f"{where}: source_model must be a non-empty string, not {source!r}")
    return ModeSet(config or layout.config_slug(source), role, source, context_kind, tuple(classes))


def check_mode_set(ms: ModeSet, vocabulary: Any, where: str) -> None:
    """Every class of `ms` must be a class of `vocabulary` (the dataset's) by label and name, and every context one
    of that class's vocabulary contexts; one-line ValidationError naming `where` otherwise."""
    names = vocabulary.label_names()
    for cm in ms.classes:
        at = f"{where}: class {cm.label} {cm.class_name!r}"
        if cm.label >= len(names):
            raise ValidationError(f"{at}: label {cm.label} is not a class of {vocabulary.dataset} "
                                  f"(labels 0..{len(names) - 1})")
        entry = vocabulary.get(cm.label)
        if cm.class_name not in {names[cm.label], entry.name, entry.prompt_name}:
            raise ValidationError(f"{at}: label {cm.label} is {names[cm.label]!r} in {vocabulary.dataset}, not "
                                  f"{cm.class_name!r} (a modes file of another dataset?)")
        known = set(entry.contexts)
        unknown = [c for c in cm.contexts if c not in known]
        if unknown:
            raise ValidationError(f"{at}: context {unknown[0]!r} is not in the {vocabulary.dataset} "
                                  f"{vocabulary.kind} vocabulary of this class ({vocabulary.source})")


def merge_modes(sets: Sequence[Mapping[str, Any]], *, config: str, family: str, k: int) -> ModeSet:
    """A family's collective modes: per class, the top `k` contexts by failure count summed over its models."""
    if not sets:
        raise ValidationError(f"family {family!r} has no modes files")
    counts: dict[int, dict[str, int]] = {}
    names: dict[int, tuple[str, str]] = {}
    for data in sets:
        for c in data["classes"]:
            names[int(c["label"])] = (str(c["class_name"]), str(c.get("prompt_name") or c["class_name"]))
            per = counts.setdefault(int(c["label"]), {})
            for m in c.get("modes", []):
                per[str(m["context"])] = per.get(str(m["context"]), 0) + int(m.get("count", 1))
    classes = tuple(
        ClassModes(label, *names[label], tuple(c for c, _ in sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))[:k]))
        for label, per in sorted(counts.items())
    )
    context_kind = str(sets[0].get("vocabulary", {}).get("kind") or "background")
    return ModeSet(config, "collective", f"collective:{family}", context_kind, classes)


def baseline_modes(class_names: Sequence[str], prompt_names: Sequence[str] | None = None,
                   config: str = "baseline") -> ModeSet:
    """The class-only baseline ("a photo of a {class}") over every class."""
    prompt_names = prompt_names or class_names
    classes = tuple(ClassModes(i, n, p) for i, (n, p) in enumerate(zip(class_names, prompt_names, strict=True)))
    return ModeSet(config, "baseline", "baseline", BASELINE_KIND, classes)


def random_context_modes(mode_sets: Sequence[ModeSet], vocabulary: Any, class_names: Sequence[str], *,
                         base_seed: int, k: int, images_per_mode: int, config: str = RANDOM_CONTEXT) -> ModeSet:
    """The random-context baseline: per class, as many images as the model configs have on average (rounded),
    spread over all of the class's vocabulary contexts in equal shares; the contexts that get one image more are
    a seeded choice (`base_seed`, label). Classes without images in any model config are left out; `class_names`
    are the dataset's (the written `class_name` column)."""
    models = [ms for ms in mode_sets if ms.role == "model"]
    totals: dict[int, int] = {}
    for ms in models:
        for cm in ms.classes:
            totals[cm.label] = totals.get(cm.label, 0) + len(cm.contexts[:k]) * images_per_mode
    classes = []
    for label in sorted(totals):
        n = round(totals[label] / len(models))
        entry, contexts = vocabulary.get(label), tuple(vocabulary.contexts(label))
        if n < 1:
            continue
        share, extra = divmod(n, len(contexts))
        lucky = set(np.random.default_rng([base_seed, RANDOM_CONTEXT_STREAM, label]).permutation(len(contexts))[:extra])
        counts = tuple(share + (j in lucky) for j in range(len(contexts)))
        kept = [(c, m) for c, m in zip(contexts, counts, strict=True) if m > 0]
        classes.append(ClassModes(label, class_names[label], entry.prompt_name, tuple(c for c, _ in kept),
                                  tuple(m for _, m in kept)))
    context_kind = models[0].context_kind if models else "background"
    return ModeSet(config, RANDOM_CONTEXT, RANDOM_CONTEXT, context_kind, tuple(classes))


def build_plan(mode_sets: Iterable[ModeSet], settings: GenerationSettings, *, generator_id: str,
               baseline_images_per_class: int | None = None) -> list[PlanRow]:
    """Rows of every config in its interleaved order (ORDER_RULE), cut into equal shards (SHARD_RULE)."""
    rows: list[PlanRow] = []
    for ms in mode_sets:
        layout.check_config_name(ms.config)
        template = settings.prompt_templates.get(ms.context_kind)
        if template is None and not all(cm.prompts for cm in ms.classes):
            raise ValidationError(f"no prompt template for context kind {ms.context_kind!r} "
                                  f"(known: {', '.join(sorted(settings.prompt_templates))})")
        items = interleave(_config_items(ms, settings, baseline_images_per_class),
                           hash_seed(settings.base_seed, ms.config, ORDER_STREAM))
        if not items:
            log.warning("config %s has no image to render (no class has a mode): left out of the plan", ms.config)
            continue
        num_shards = shard_count(len(items), settings.shard_size)
        placed = [(shard, position) for shard, bounds in enumerate(shard_bounds(len(items), num_shards))
                  for position in range(len(bounds))]
        for (shard, position), (cm, context, replica) in zip(placed, items, strict=True):
            rows.append(PlanRow(
                config=ms.config, split=settings.split, shard_index=shard, num_shards=num_shards,
                position=position, source_model=ms.source_model, label=cm.label,
                class_name=cm.class_name, context=context, context_kind=ms.context_kind, replica=replica,
                prompt=_prompt(cm, context, template, ms.context_kind),
                negative_prompt=settings.negative_prompt,
                seed=derive_seed(settings.base_seed, ms.config, cm.label, ms.context_kind, context, replica),
                guidance_scale=float(settings.guidance), num_inference_steps=int(settings.steps),
                height=int(settings.size), width=int(settings.size), generator=generator_id,
            ))
    return rows


def _prompt(cm: ClassModes, context: str, template: str | None, context_kind: str) -> str:
    if cm.prompts:
        return cm.prompts[cm.contexts.index(context)]
    assert template is not None
    return render_prompt(template, cm.prompt_name, "" if context_kind == BASELINE_KIND else context)


def prompted_modes(config: str, source_model: str, context_kind: str,
                   items: Sequence[tuple[int, str, str, str, int]]) -> ModeSet:
    """A model config of explicitly prompted images: `items` are (label, class name, context, prompt, images), in
    rank order within each class (slices, discovered bugs). Repeated (label, context) pairs are refused."""
    by_label: dict[int, list[tuple[str, str, str, int]]] = {}
    for label, name, context, prompt, n in items:
        entries = by_label.setdefault(int(label), [])
        if any(c == context for _, c, _, _ in entries):
            raise ValidationError(f"config {config}: context {context!r} of class {label} is listed twice")
        entries.append((name, context, prompt, int(n)))
    classes = tuple(ClassModes(label, e[0][0], e[0][0], tuple(c for _, c, _, _ in e), tuple(n for *_, n in e),
                               tuple(p for _, _, p, _ in e)) for label, e in sorted(by_label.items()))
    return ModeSet(config, "model", source_model, context_kind, classes)


def shard_count(n: int, shard_size: int) -> int:
    """The number of shards of a config of `n` images with at most `shard_size` per shard (SHARD_RULE)."""
    if n < 1 or shard_size < 1:
        raise ValidationError(f"a config needs n >= 1 images and shard_size >= 1 (got {n}, {shard_size})")
    m = next(m for m in (SHARD_MULTIPLE, 4, 2, 1) if n >= m * MIN_SHARD_SAMPLES or m == 1)
    return m * math.ceil(n / (m * shard_size))


def shard_bounds(n: int, num_shards: int) -> list[range]:
    """Positions of each shard in a config of `n` images cut into `num_shards` equal shards (within one image)."""
    return [range(i * n // num_shards, (i + 1) * n // num_shards) for i in range(num_shards)]


def interleave(items: Sequence[tuple[ClassModes, str, int]], order_seed: int) -> list[tuple[ClassModes, str, int]]:
    """The items of one config in ORDER_RULE's order: contexts interleaved within each class, classes interleaved."""
    by_class: dict[int, list[tuple[ClassModes, str, int]]] = {}
    for item in items:
        by_class.setdefault(item[0].label, []).append(item)
    classes = []
    for label, group in by_class.items():
        by_context: dict[str, list[tuple[ClassModes, str, int]]] = {}
        for item in group:
            by_context.setdefault(item[1], []).append(item)
        classes.append((label, _spread(list(by_context.values()), [order_seed, 1 + label])))
    return _spread([g for _, g in classes], [order_seed, 0])


def _spread(groups: list[list[Any]], seed: list[int]) -> list[Any]:
    """Merge groups so each is spread evenly over the result: item j of group g sits at key (j + u) / len(g)."""
    rng = np.random.default_rng(seed)
    keyed = []
    for g, group in enumerate(groups):
        u = rng.random(len(group))
        keyed += [((j + u[j]) / len(group), g, j, item) for j, item in enumerate(group)]
    return [item for *_, item in sorted(keyed, key=lambda t: t[:3])]


def render_prompt(template: str, prompt_name: str, context: str) -> str:
    """Fill a template ('{class_name}' is the class's prompt name, as in vocabularies); see failmode.prompts."""
    return fill_template(template, prompt_name, context)


def _config_items(ms: ModeSet, settings: GenerationSettings,
                  baseline_images_per_class: int | None) -> list[tuple[ClassModes, str, int]]:
    if ms.context_kind == BASELINE_KIND:
        n = baseline_images_per_class or settings.images_per_mode * settings.k
        # The baseline's "context" column names the kind: the writer needs a non-empty string.
        return [(cm, "none", r) for cm in sorted(ms.classes, key=lambda c: c.label) for r in range(n)]
    return [(cm, ctx, r) for cm in sorted(ms.classes, key=lambda c: c.label)
            for ctx, n in zip(cm.contexts[:len(cm.counts) or settings.k], cm.counts or itertools.repeat(settings.images_per_mode))
            for r in range(n)]


def write_plan(rows: Sequence[PlanRow], path: str | os.PathLike[str]) -> str:
    """Write the plan as parquet (fixed writer settings: equal plans give equal bytes); return its sha256."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([asdict(r) for r in rows], schema=_plan_schema())
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=False, write_statistics=False, version="2.6")
    return sha256_file(path)


def read_plan(path: str | os.PathLike[str]) -> list[PlanRow]:
    """Read a plan written by `write_plan`; a missing file or wrong columns raise ValidationError."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise ValidationError(f"{path}: plan not found")
    table = pq.read_table(path)
    if tuple(table.column_names) != PLAN_COLUMNS:
        raise ValidationError(f"{path}: not a failmode plan (columns {', '.join(table.column_names)})")
    return [PlanRow(**r) for r in table.to_pylist()]


def _plan_schema() -> Any:
    import pyarrow as pa

    types = {int: pa.int64(), str: pa.string(), float: pa.float64()}
    hints = {"int": int, "str": str, "float": float}
    return pa.schema([(f.name, types[hints[str(f.type)]]) for f in fields(PlanRow)])


def plan_path(root: str | os.PathLike[str]) -> Path:
    """Where a dataset folder keeps its plan."""
    return Path(root) / layout.PLAN_PATH


def read_plan_of(root: str | os.PathLike[str]) -> list[PlanRow]:
    """The plan of a dataset folder, checked against the manifest's `plan_sha256` when a manifest exists."""
    path = plan_path(root)
    manifest = Path(root) / layout.MANIFEST_NAME
    if manifest.exists() and path.exists():
        expected = read_json(manifest).get("plan_sha256")
        if expected and sha256_file(path) != expected:
            raise ValidationError(f"{path}: sha256 differs from the manifest's plan_sha256 (the plan was changed)")
    return read_plan(path)


# --- budget policies: how a model config's per-class image budget is spread over the class's contexts ----------

def check_budget(policies: Sequence[str], where: str = "generation settings") -> tuple[str, ...]:
    """`policies` as a tuple if they are distinct known budget policies (at least one), else ValidationError."""
    policies = tuple(policies)
    unknown = [p for p in policies if p not in BUDGET_POLICIES]
    if not policies or unknown or len(set(policies)) != len(policies):
        raise ValidationError(f"{where}: budget must be distinct policies out of {', '.join(BUDGET_POLICIES)} "
                              f"(got {', '.join(map(str, policies)) or 'none'})")
    return policies


def policy_config(model_config: str, policy: str, policies: Sequence[str]) -> str:
    """The config a model's images under `policy` go to: the model's own config for the first of `policies`, the
    sibling `<model config>-<policy>` for any other."""
    return model_config if policy == policies[0] else f"{model_config}-{policy}"


def seed_context_counts(records: Iterable[Mapping[str, Any]], vocabulary: Any) -> dict[int, list[int]]:
    """Per class label, the number of seed failures attributed to each of its vocabulary contexts (vocabulary
    order), from attribution records (attributions.parquet rows); rows of any other half (heldout) are skipped."""
    counts: dict[int, list[int]] = {}
    for r in records:
        if r["half"] != "seed":
            continue
        label = int(r["label"])
        contexts = list(vocabulary.contexts(label))
        per = counts.setdefault(label, [0] * len(contexts))
        if r["context"] not in contexts:
            raise ValidationError(f"attributed context {r['context']!r} of class {label} is not in the vocabulary")
        per[contexts.index(r["context"])] += 1
    return counts


def evidence_probabilities(counts: Sequence[int]) -> np.ndarray:
    """The predictive probability of each context under EVIDENCE_RULE's support models, weighted by their
    posterior: peaked counts put nearly all of it on the few top contexts, flat or sparse counts spread it."""
    from scipy.special import betaln, gammaln

    n = np.asarray(counts, np.int64)
    m, total = len(n), int(n.sum())
    if m == 0:
        return np.zeros(0)
    if total == 0 or m == 1:
        return np.full(m, 1.0 / m)
    order = np.lexsort((np.arange(m), -n))
    log_evidence, predictive = [], []
    for s in range(1, m + 1):
        top = int(n[order[:s]].sum())
        rest = total - top
        p = np.empty(m)
        if s == m:
            log_evidence.append(-total * math.log(m))
            p[:] = 1.0 / m
        else:
            log_choose = gammaln(m + 1) - gammaln(s + 1) - gammaln(m - s + 1)
            log_evidence.append(betaln(top + 1, rest + 1) - top * math.log(s) - rest * math.log(m - s) - log_choose)
            e = (rest + 1) / (total + 2)
            p[:] = e / (m - s)
            p[order[:s]] = (1 - e) / s
        predictive.append(p)
    w = np.exp(np.asarray(log_evidence) - max(log_evidence))
    return (w / w.sum()) @ np.asarray(predictive)


def water_fill(p: np.ndarray, budget: float, tau: float) -> np.ndarray:
    """x maximising sum_j p_j (1 - exp(-x_j / tau)) with sum x = budget, x >= 0: x_j = tau ln(p_j / lambda)+."""
    order = np.lexsort((np.arange(len(p)), -p))
    logs = np.log(np.maximum(p[order], 1e-300))
    x = np.zeros(len(p))
    for a in range(len(p), 0, -1):  # the largest active set whose weakest member stays above lambda
        log_lam = (logs[:a].sum() - budget / tau) / a
        if logs[a - 1] > log_lam:
            x[order[:a]] = tau * (logs[:a] - log_lam)
            break
    return x


def largest_remainder(x: np.ndarray, budget: int, priority: np.ndarray) -> np.ndarray:
    """Integers summing to `budget` from real shares `x`: floors, then one more to the largest remainders (ties: higher
    `priority`, then position)."""
    x = np.maximum(np.asarray(x, np.float64), 0.0)
    x = x * (budget / x.sum()) if x.sum() > 0 else np.full(len(x), budget / max(len(x), 1))
    floors = np.floor(x).astype(np.int64)
    left = int(budget - floors.sum())  # 0 <= left <= len(x)
    order = np.lexsort((np.arange(len(x)), -priority, -np.round(x - floors, 9)))
    floors[order[:left]] += 1
    return floors


def evidence_allocation(counts: Sequence[int], budget: int, images_per_mode: int) -> tuple[int, ...]:
    """Images per context (vocabulary order, summing to `budget`) under EVIDENCE_RULE from a class's seed-failure
    counts per context."""
    if budget < 0 or images_per_mode < 1:
        raise ValidationError(f"need budget >= 0 and images_per_mode >= 1 (got {budget}, {images_per_mode})")
    p = evidence_probabilities(counts)
    if budget == 0 or len(p) == 0:
        return tuple(0 for _ in p)
    x = water_fill(p, float(budget), images_per_mode / 2)
    return tuple(int(v) for v in largest_remainder(x, budget, p))


def evidence_modes(top_k: ModeSet, counts: Mapping[int, Sequence[int]], vocabulary: Any, *, config: str,
                   k: int, images_per_mode: int) -> ModeSet:
    """The evidence-weighted sibling of a model's top-k config: per class the same number of images as top-k
    (`len(top-k contexts) x images_per_mode`), spread over the class's vocabulary contexts by its seed-failure
    `counts` (EVIDENCE_RULE); contexts that get no image are left out."""
    classes = []
    for cm in top_k.classes:
        budget = len(cm.contexts[:k]) * images_per_mode
        contexts = tuple(vocabulary.contexts(cm.label))
        n = counts.get(cm.label, [0] * len(contexts))
        if len(n) != len(contexts):
            raise ValidationError(f"config {config}: class {cm.label} has {len(n)} counts for {len(contexts)} contexts")
        alloc = evidence_allocation(n, budget, images_per_mode)
        kept = [(c, a) for c, a in zip(contexts, alloc, strict=True) if a > 0]
        if kept:
            classes.append(ClassModes(cm.label, cm.class_name, cm.prompt_name, tuple(c for c, _ in kept),
                                      tuple(a for _, a in kept)))
    return ModeSet(config, top_k.role, top_k.source_model, top_k.context_kind, tuple(classes), EVIDENCE_WEIGHTED)


def allocation_record(ms: ModeSet, k: int, images_per_mode: int) -> dict[str, Any]:
    """What the manifest records of one model config's budget: its policy and each class's images per context."""
    alloc = {}
    for cm in ms.classes:
        counts = cm.counts or tuple(images_per_mode for _ in cm.contexts[:k])
        alloc[str(cm.label)] = dict(zip(cm.contexts, counts, strict=False))
    return {"policy": ms.policy, "images": alloc}
