"""Generate, then discover (after Wiles et al. 2022, "Discovering bugs in vision models using off-the-shelf
image generation and captioning"), with vocabulary phrases in place of a captioner.

Per class:
  1. generate `images_per_prompt` images for each prompt of a broad set: the plain class prompt (unless
     `plain_prompt` is off, for generators that need a context) and "a photo of a {class} {context}" for every
     context of every vocabulary;
  2. classify them and keep the misclassified ones;
  3. cluster those in the attributor's embedding space (spherical k-means, k-means++ seeding from a fixed seed;
     k = min(max_clusters, failures // min_cluster_size));
  4. describe each cluster by the vocabulary phrases that best match its mean embedding (scores centred over the
     kind's contexts as in tagging; the best phrase of each kind, joined); clusters with the same description merge;
  5. regenerate `confirm_images` fresh images from each description and measure their failure rate.
A description is a *confirmed bug* when the lower end of the 95 % Wilson interval of its failure rate exceeds the
upper end of the class's base rate interval. The base rate is measured on `confirm_images` fresh images of the
plain class prompt (`base="plain"`), or over all images of the class's broad set (`base="pooled"`, for generators
that cannot render a plain prompt; conservative, as the broad set contains the bugs). A one-sided two-proportion
z-test p-value is reported beside it. Bugs rank by (lower bound of failure rate) - (upper bound of base rate).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from failmode.backends import Attributor, GenerationRequest, ImageGenerator
from failmode.discovery.classify import Classifier, images_source
from failmode.discovery.outputs import DebugRender, requests_for, save_png, write_debug_config
from failmode.discovery.tagging import ContextVocabulary
from failmode.errors import FailmodeError, UsageError
from failmode.generation.plan import ModeSet, prompted_modes
from failmode.grids import image_grid
from failmode.io import finite_json, write_bytes_atomic, write_json
from failmode.mining.tables import write_table
from failmode.progress import progress
from failmode.prompts import fill_template
from failmode.stats import two_proportion_p, wilson_interval
from failmode.vocab.vocabulary import DEFAULT_TEMPLATE

log = logging.getLogger(__name__)

BUGS_FORMAT = "failmode-bugs/1"
BASES = ("plain", "pooled")


@dataclass(frozen=True)
class DiscoverParams:
    """Sizes and seeds of one discover run (see the module docstring)."""

    images_per_prompt: int = 8
    max_clusters: int = 6
    min_cluster_size: int = 3
    confirm_images: int = 32
    plain_prompt: bool = True
    base: str = "plain"
    size: int = 512
    steps: int = 25
    guidance: float = 7.5
    seed: int = 0

    def check(self) -> DiscoverParams:
        """Raise UsageError on impossible values; return self."""
        for name in ("images_per_prompt", "max_clusters", "min_cluster_size", "confirm_images", "size", "steps"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.base not in BASES:
            raise UsageError(f"unknown base rate {self.base!r} (known: {', '.join(BASES)})")
        if self.base == "plain" and not self.plain_prompt:
            raise UsageError("base rate 'plain' needs the plain class prompt; use base 'pooled' without it")
        return self


@dataclass
class Bug:
    """A candidate bug: a cluster of failures, its description, and its confirmation on fresh images."""

    label: int
    class_name: str
    prompt: str
    phrases: list[str]
    kinds: list[str]
    similarity: float
    cluster_failures: int
    confirm_n: int = 0
    confirm_failures: int = 0
    failure_rate: float = 0.0
    failure_low: float = 0.0
    failure_high: float = 1.0
    base_n: int = 0
    base_failures: int = 0
    base_rate: float = 0.0
    base_low: float = 0.0
    base_high: float = 1.0
    p_value: float = 1.0
    confirmed: bool = False
    margin: float = 0.0
    rank: int = 0
    alternatives: list[str] = field(default_factory=list)
    grid: str = ""
    #: up to 16 confirmation images (failures first) with their predicted labels, for the example grid
    examples: list[tuple[Image.Image, int]] = field(default_factory=list, repr=False, compare=False)

    def to_row(self) -> dict[str, Any]:
        """A flat dict (one row of bugs.parquet)."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "examples"}
        row["phrases"] = " + ".join(self.phrases)
        row["kinds"] = " + ".join(self.kinds)
        row["alternatives"] = " | ".join(self.alternatives)
        return row


@dataclass
class DiscoverSetup:
    """What one generate-then-discover run needs: backends, vocabularies, classes, parameters, and how its debug
    config would be rendered (`failmode.discovery.outputs.DebugRender`)."""

    generator: ImageGenerator
    classifier: Classifier
    attributor: Attributor
    vocabularies: list[Any]
    class_names: list[str]
    label_names: list[str]
    labels: list[int] | None
    params: DiscoverParams
    name: str
    render: DebugRender


@dataclass
class DiscoverReport:
    """All candidate bugs (confirmed ones first, ranked), per-class broad-set figures, and run metadata."""

    bugs: list[Bug]
    classes: list[dict[str, Any]]
    params: DiscoverParams
    meta: dict[str, Any]

    @property
    def confirmed(self) -> list[Bug]:
        """The confirmed bugs, in rank order."""
        return [b for b in self.bugs if b.confirmed]


def spherical_kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """Cluster labels [N] of L2-normalised rows by cosine k-means (k-means++ seeding from `seed`)."""
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [x[int(rng.integers(n))]]
    for _ in range(1, k):
        d = np.maximum(1.0 - np.max(x @ np.stack(centres).T, axis=1), 0.0)
        p = d / d.sum() if d.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(x[int(rng.choice(n, p=p))])
    c = np.stack(centres)
    assign = np.zeros(n, dtype=np.int64)
    for it in range(iters):
        new = np.argmax(x @ c.T, axis=1)
        if it and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = x[assign == j]
            if len(members):
                m = members.sum(0)
                c[j] = m / max(np.linalg.norm(m), 1e-12)
    return assign


def describe_cluster(centroid: np.ndarray, attributor: Attributor, class_name: str, label: int,
                     vocabularies: Sequence[ContextVocabulary],
                     alternatives: int = 3) -> tuple[list[str], list[str], float, list[str]]:
    """(best phrase per kind, their kinds, mean centred similarity, runner-up phrases) for a cluster centroid."""
    phrases, kinds, sims, alts = [], [], [], []
    for v in vocabularies:
        ctx = v.contexts(label)
        s = attributor.scores(centroid[None, :], attributor.encode_contexts(class_name, ctx))[0]
        s = s - s.mean()
        order = np.argsort(-s, kind="stable")
        phrases.append(ctx[order[0]])
        kinds.append(v.kind)
        sims.append(float(s[order[0]]))
        alts += [ctx[j] for j in order[1:1 + alternatives]]
    return phrases, kinds, float(np.mean(sims)), alts


class _Runner:
    """Generates and classifies batches of requests, counting failures (one place for both steps)."""

    def __init__(self, generator: ImageGenerator, classifier: Classifier, class_names: list[str]) -> None:
        self.generator, self.classifier, self.class_names = generator, classifier, class_names

    def run(self, requests: list[GenerationRequest]) -> tuple[list[Image.Image], np.ndarray]:
        images = self.generator.generate(requests)
        labels = [r.label for r in requests]
        src = images_source(images, labels, self.class_names, [self.generator.ident, [r.to_dict() for r in requests]])
        return images, self.classifier.predict(src)


def _broad_requests(label: int, name: str, prompt_of: Any, vocabularies: Sequence[ContextVocabulary],
                    p: DiscoverParams) -> list[GenerationRequest]:
    kw = {"size": p.size, "steps": p.steps, "guidance": p.guidance}
    reqs = []
    if p.plain_prompt:
        reqs += requests_for(prompt_of(label, ""), label=label, class_name=name, context="", context_kind="class-only",
                             n=p.images_per_prompt, seed_parts=(p.seed, "broad", label, ""), **kw)
    for v in vocabularies:
        for ctx in v.contexts(label):
            reqs += requests_for(prompt_of(label, ctx), label=label, class_name=name, context=ctx,
                                 context_kind=v.kind, n=p.images_per_prompt, seed_parts=(p.seed, "broad", label, ctx), **kw)
    return reqs


def default_prompt(class_name: str) -> Any:
    """'a photo of a {class} {context}' filled as vocabularies fill it (`failmode.prompts.fill_template`)."""
    return lambda label, ctx: fill_template(DEFAULT_TEMPLATE, class_name, ctx)


def discover_class(label: int, runner: _Runner, attributor: Attributor, vocabularies: Sequence[ContextVocabulary],
                   p: DiscoverParams) -> tuple[list[Bug], dict[str, Any]]:
    """Candidate bugs of one class, confirmed or not, and its broad-set figures."""
    name = runner.class_names[label]
    vocab_prompt = getattr(vocabularies[0], "prompt", None)
    prompt_of = vocab_prompt if callable(vocab_prompt) else default_prompt(name)
    broad = _broad_requests(label, name, prompt_of, vocabularies, p)
    images, preds = runner.run(broad)
    wrong = np.flatnonzero(preds != label)
    stats = {"label": label, "class_name": name, "broad_images": len(broad), "broad_failures": int(len(wrong))}
    if p.base == "plain":
        base_reqs = requests_for(prompt_of(label, ""), label=label, class_name=name, context="", context_kind="class-only",
                                 n=p.confirm_images, seed_parts=(p.seed, "base", label), size=p.size, steps=p.steps,
                                 guidance=p.guidance)
        _, base_pred = runner.run(base_reqs)
        base_k, base_n = int((base_pred != label).sum()), len(base_reqs)
    else:
        base_k, base_n = int(len(wrong)), len(broad)
    stats.update(base_n=base_n, base_failures=base_k)
    if len(wrong) < p.min_cluster_size:
        return [], stats
    src = images_source([images[i] for i in wrong], [label] * len(wrong), runner.class_names,
                        [runner.generator.ident, [broad[i].to_dict() for i in wrong]])
    emb = attributor.encode_images(src, np.arange(len(wrong)))
    k = min(p.max_clusters, max(1, len(wrong) // p.min_cluster_size))
    assign = spherical_kmeans(emb, k, seed=p.seed)
    merged: dict[tuple[str, ...], Bug] = {}
    for j in np.unique(assign):
        members = emb[assign == j]
        if len(members) < p.min_cluster_size:
            continue
        centroid = members.mean(0)
        centroid /= max(np.linalg.norm(centroid), 1e-12)
        phrases, kinds, sim, alts = describe_cluster(centroid, attributor, name, label, vocabularies)
        key = tuple(phrases)
        if key in merged:
            merged[key].cluster_failures += len(members)
            continue
        merged[key] = Bug(label, name, prompt_of(label, " ".join(phrases)), phrases, kinds, sim, len(members),
                          alternatives=alts)
    base_lo, base_hi = (float(v) for v in wilson_interval(base_k, base_n))
    for bug in merged.values():
        reqs = requests_for(bug.prompt, label=label, class_name=name, context=" ".join(bug.phrases),
                            context_kind=bug.kinds[0] if len(set(bug.kinds)) == 1 else "discovered",
                            n=p.confirm_images, seed_parts=(p.seed, "confirm", label, bug.prompt), size=p.size,
                            steps=p.steps, guidance=p.guidance)
        imgs, pred = runner.run(reqs)
        k_fail = int((pred != label).sum())
        lo, hi = (float(v) for v in wilson_interval(k_fail, len(reqs)))
        bug.confirm_n, bug.confirm_failures = len(reqs), k_fail
        bug.failure_rate, bug.failure_low, bug.failure_high = k_fail / len(reqs), lo, hi
        bug.base_n, bug.base_failures, bug.base_rate = base_n, base_k, base_k / max(base_n, 1)
        bug.base_low, bug.base_high = base_lo, base_hi
        bug.p_value = two_proportion_p(k_fail, len(reqs), base_k, base_n)
        bug.margin = lo - base_hi
        bug.confirmed = lo > base_hi
        order = sorted(range(len(imgs)), key=lambda i: pred[i] == label)  # failures first
        bug.examples = [(imgs[i], int(pred[i])) for i in order[:16]]
    return list(merged.values()), stats


def rank_bugs(bugs: Sequence[Bug]) -> list[Bug]:
    """Confirmed bugs first, then by margin (failure lower bound minus base upper bound); `rank` from 1."""
    ordered = sorted(bugs, key=lambda b: (not b.confirmed, -b.margin, b.label, b.prompt))
    for i, b in enumerate(ordered, 1):
        b.rank = i
    return ordered


def discover(generator: ImageGenerator, classifier: Classifier, attributor: Attributor,
             vocabularies: Sequence[ContextVocabulary], class_names: list[str], *,
             labels: Sequence[int] | None = None, params: DiscoverParams = DiscoverParams()) -> DiscoverReport:
    """Run generate-then-discover over `labels` (all classes by default)."""
    params.check()
    if not vocabularies:
        raise UsageError("discover needs at least one vocabulary")
    runner = _Runner(generator, classifier, class_names)
    bugs: list[Bug] = []
    classes = []
    for label in progress(list(labels if labels is not None else range(len(class_names))), desc="discover", unit="class"):
        found, stats = discover_class(int(label), runner, attributor, vocabularies, params)
        bugs += found
        classes.append(stats)
    bugs = rank_bugs(bugs)
    meta = {"generator": generator.ident, "classifier": classifier.ident, "attributor": attributor.ident,
            "vocabulary_kinds": [v.kind for v in vocabularies], "n_candidates": len(bugs),
            "n_confirmed": sum(b.confirmed for b in bugs), "class_names": list(class_names)}
    log.info("discover: %d candidate bugs, %d confirmed", len(bugs), meta["n_confirmed"])
    return DiscoverReport(bugs, classes, params, meta)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def report_markdown(report: DiscoverReport) -> str:
    """The human-readable ranked list of bugs."""
    p, m = report.params, report.meta
    lines = ["# Discovered bugs (generate, then discover)", "",
             f"Generator: `{m['generator']}`; classifier: `{m['classifier']}`; attributor: `{m['attributor']}`.",
             f"{p.images_per_prompt} images per broad prompt, {p.confirm_images} per confirmation; base rate: "
             f"`{p.base}`. Confirmed = lower 95 % Wilson bound of the failure rate above the upper bound of the "
             "base rate.", "",
             f"{m['n_confirmed']} confirmed of {m['n_candidates']} candidates.", "",
             "| rank | class | description | failures | rate [95 % CI] | base rate [95 % CI] | p | confirmed | grid |",
             "|" + "---|" * 9]
    for b in report.bugs:
        grid = f"![]({b.grid})" if b.grid else ""
        lines.append(f"| {b.rank} | {b.class_name} | {b.prompt} | {b.confirm_failures}/{b.confirm_n} | "
                     f"{b.failure_rate:.2f} [{b.failure_low:.2f}, {b.failure_high:.2f}] | {b.base_rate:.2f} "
                     f"[{b.base_low:.2f}, {b.base_high:.2f}] | {b.p_value:.2g} | {'yes' if b.confirmed else 'no'} | {grid} |")
    return "\n".join(lines) + "\n"


def write_bug_report(out_dir: str | Path, report: DiscoverReport) -> dict[str, Path]:
    """Write bugs.json, bugs.parquet, report.md and one example grid PNG per bug (grids/)."""
    out = Path(out_dir)
    names = report.meta.get("class_names")
    for b in report.bugs:
        ex = b.examples
        if ex:
            rel = f"grids/bug-{b.rank:03d}-{_slug(b.class_name)}-{_slug(' '.join(b.phrases))}.png"
            caps = [f"-> {names[p] if names else p}" for _, p in ex]
            save_png(out / rel, image_grid([im for im, _ in ex], caps))
            b.grid = rel
    rows = [b.to_row() for b in report.bugs]
    doc = {"format": BUGS_FORMAT, "params": asdict(report.params), "meta": report.meta, "classes": report.classes,
           "bugs": rows}
    paths = {"json": out / "bugs.json", "parquet": out / "bugs.parquet", "report": out / "report.md"}
    write_json(paths["json"], finite_json(doc))
    write_table(paths["parquet"], rows, {"format": BUGS_FORMAT})
    write_bytes_atomic(paths["report"], report_markdown(report).encode("utf-8"))
    return paths


def discover_run(setup: DiscoverSetup, out_dir: str | Path, *, debug_images: int = 0) -> tuple[DiscoverReport,
                                                                                              dict[str, Path]]:
    """`discover` with the setup's backends, its bug report in `out_dir` and, with `debug_images`, that many images
    per confirmed bug rendered into out_dir/debug-dataset (a finalized dataset folder); the report and the paths."""
    s = setup
    report = discover(s.generator, s.classifier, s.attributor, s.vocabularies, s.class_names, labels=s.labels,
                      params=s.params)
    paths = write_bug_report(out_dir, report)
    if debug_images:
        if not report.confirmed:
            raise FailmodeError("no confirmed bugs to render into a debug config")
        modes = bug_modes(report.confirmed, per_bug=debug_images, source_model=s.classifier.ident)
        paths["debug"] = write_debug_config(Path(out_dir) / "debug-dataset", name=s.name, modes=modes,
                                            render=s.render, class_names=s.label_names,
                                            description="confirmed bugs of generate-then-discover")
    return report, paths


def bug_modes(bugs: Sequence[Bug], *, per_bug: int, source_model: str, config: str = "discovered") -> ModeSet:
    """The debug config of confirmed bugs (rendered through the generation plan: fresh seeds, correct labels): per
    bug `per_bug` images of its prompt, its phrases as the context."""
    kinds = {k for b in bugs for k in b.kinds}
    kind = kinds.pop() if len(kinds) == 1 else "discovered"
    items = [(b.label, b.class_name, " ".join(b.phrases), b.prompt, per_bug) for b in bugs]
    return prompted_modes(config, source_model, kind, items)
