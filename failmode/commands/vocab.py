"""`failmode vocab`: build, show, diff and validate per-class context vocabularies."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from failmode.vocab.llm import DEFAULT_RETRIES, DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from failmode.vocab import Vocabulary

HELP = "build (with an LLM), show, diff and validate per-class 'uncommon context' vocabularies"
DESCRIPTION = (
    "Vocabularies list, per class, contexts in which the class is uncommon (kind 'background': 'in a desert') or "
    "uncommon colours (kind 'color': 'that is bright pink'), phrased for 'a photo of a {class} {context}'. "
    "Shipped: imagenet-1k (background), cifar10 and cifar100 (background, color). 'build' regenerates one through "
    "any OpenAI-compatible endpoint, with an on-disk response cache so reruns are free and resumable."
)

log = logging.getLogger("failmode.vocab")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Subcommands build / show / diff / validate."""
    sub = parser.add_subparsers(dest="vocab_command", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="generate a vocabulary with an LLM behind an OpenAI-compatible endpoint")
    b.add_argument("--dataset", required=True, help="dataset whose classes to use (cifar10, cifar100, imagenet-1k)")
    b.add_argument("--kind", default="background", help="vocabulary kind: background or color (default: background)")
    b.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1")
    b.add_argument("--model", required=True, help="model name sent to the endpoint")
    b.add_argument("--classes", nargs="+", metavar="CLASS", help="only these classes (indices or names; default: all)")
    b.add_argument("--out", type=Path, help="output JSON (default: ./<dataset>.<kind>.json)")
    b.add_argument("--min-contexts", type=int, default=6, help="per-class minimum; shortfalls are reported (default 6)")
    b.add_argument("--max-contexts", type=int, default=12, help="per-class maximum (default 12)")
    b.add_argument("--rounds", type=int, default=4, help="questions per class until the minimum is met (default 4)")
    b.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of rounds after the first")
    b.add_argument("--seed", type=int, default=0, help="seed of the first round (round r uses seed+r)")
    b.add_argument("--concurrency", type=int, default=4, help="classes asked in parallel (default 4)")
    b.add_argument("--structured", action="store_true",
                   help="ask for a JSON-schema response_format (falls back to free text if the server refuses)")
    b.add_argument("--no-common", action="store_true", help="do not ask for (and filter out) common contexts")
    b.add_argument("--embedding-model", help="also drop semantic duplicates by embedding cosine (endpoint /embeddings)")
    b.add_argument("--cache-dir", type=Path,
                   help="response cache (default: $FAILMODE_CACHE_DIR/llm or ~/.cache/failmode/llm)")
    b.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default OPENAI_API_KEY; optional for local servers)")
    b.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds per request (default {DEFAULT_TIMEOUT:g}: a hung server fails in about "
                        f"{(DEFAULT_RETRIES + 1) * DEFAULT_TIMEOUT:g} s; raise it for slow models)")
    b.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help=f"retries of a failed request, with backoff (default {DEFAULT_RETRIES})")
    b.add_argument("--version", dest="vocab_version", default="0.1.0", help="version recorded in the file")
    b.add_argument("--strict", action="store_true", help="exit 1 when any class falls short of --min-contexts")

    s = sub.add_parser("show", help="summarise a vocabulary and list its contexts (no argument: list shipped ones)")
    s.add_argument("vocabulary", nargs="?", help="shipped dataset name or JSON path")
    s.add_argument("--kind", default="background", help="kind of a shipped vocabulary (default: background)")
    s.add_argument("--class", dest="classes", nargs="+", metavar="CLASS", help="only these classes (indices or names)")
    s.add_argument("--prompts", action="store_true", help="print full prompts instead of contexts")

    d = sub.add_parser("diff", help="compare two vocabularies (e.g. two versions) class by class")
    d.add_argument("a", help="shipped dataset name or JSON path")
    d.add_argument("b", help="shipped dataset name or JSON path")
    d.add_argument("--kind", default="background", help="kind of shipped vocabularies (default: background)")

    v = sub.add_parser("validate", help="check coverage, count bounds, duplicates and provenance")
    v.add_argument("vocabulary", help="shipped dataset name or JSON path")
    v.add_argument("--kind", default="background", help="kind of a shipped vocabulary (default: background)")
    v.add_argument("--min-contexts", type=int, default=6)
    v.add_argument("--max-contexts", type=int, default=12)
    v.add_argument("--partial", action="store_true", help="do not require every class of the dataset")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action."""
    return {"build": _build, "show": _show, "diff": _diff, "validate": _validate}[args.vocab_command](args)


def _build(args: argparse.Namespace) -> int:
    from failmode.vocab.build import BuildConfig, build_vocabulary, resolve_classes
    from failmode.vocab.llm import ChatClient

    config = BuildConfig(args.dataset, args.kind, args.min_contexts, args.max_contexts, args.rounds,
                         args.temperature, args.seed, concurrency=args.concurrency, structured=args.structured,
                         use_common=not args.no_common, embedding_model=args.embedding_model,
                         version=args.vocab_version)
    classes = resolve_classes(args.dataset, args.classes)
    client = ChatClient(args.endpoint, args.model, api_key=os.environ.get(args.api_key_env),
                        cache_dir=args.cache_dir, timeout=args.timeout, max_retries=args.retries)
    report = build_vocabulary(config, client, classes)
    out = report.save(args.out or Path(f"{args.dataset}.{args.kind}.json"))
    print(report.summary())
    print(f"wrote {out} ({len(report.vocabulary.classes)} classes)")
    return 1 if args.strict and report.short else 0


def _load(name: str, kind: str) -> Vocabulary:
    from failmode.vocab import load_vocabulary

    return load_vocabulary(name, kind)


def _show(args: argparse.Namespace) -> int:
    from failmode.vocab import shipped_vocabularies
    from failmode.vocab.build import resolve_classes
    from failmode.vocab.classnames import ClassInfo
    from failmode.vocab.views import describe

    if not args.vocabulary:
        for dataset, kind in shipped_vocabularies():
            print(f"{dataset}\t{kind}")
        return 0
    vocab = _load(args.vocabulary, args.kind)
    labels = None
    if args.classes:
        infos = [ClassInfo(c.index, c.name, c.prompt_name) for c in vocab.classes]
        labels = [c.index for c in resolve_classes(vocab.dataset, args.classes, infos)]
    sys.stdout.write(describe(vocab, labels, args.prompts) + "\n")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from failmode.vocab.views import diff_vocabularies, format_diff

    a, b = _load(args.a, args.kind), _load(args.b, args.kind)
    sys.stdout.write(format_diff(diff_vocabularies(a, b), args.a, args.b) + "\n")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from failmode.vocab import validate

    vocab = _load(args.vocabulary, args.kind)
    validate(vocab, min_contexts=args.min_contexts, max_contexts=args.max_contexts, complete=not args.partial)
    print(f"{vocab.source}: valid ({len(vocab.classes)} classes)")
    return 0
