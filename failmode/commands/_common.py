"""Argument helpers shared by several commands (no heavy imports)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from failmode.errors import UsageError


def parse_options(items: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE strings (from a repeatable `flag`) as a dict; values that parse as JSON are decoded."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} wants KEY=VALUE, not {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_bad_image_argument(p: argparse.ArgumentParser) -> None:
    """--on-bad-image error|skip (failmode.data.sources.BadImages)."""
    p.add_argument("--on-bad-image", default="error", choices=("error", "skip"),
                   help="an image that cannot be decoded: error (default: stop, naming it) or skip (leave it out; "
                        "the outputs record how many and which)")


#: --clip-* flags (argparse dest -> ClipAttributor option) that every attributing command has
CLIP_FLAGS = {"clip_model": "model", "clip_pretrained": "pretrained", "templates": "templates", "device": "device"}


def add_attributor_arguments(p: Any) -> None:
    """--attributor, the --clip-* options and the repeatable --attributor-option KEY=VALUE (alias --option)."""
    p.add_argument("--attributor", default="clip", help="registered attributor (default clip)")
    p.add_argument("--clip-model", default="ViT-B-32", help="open_clip model name or config JSON (default ViT-B-32)")
    p.add_argument("--clip-pretrained", default="openai",
                   help="open_clip pretrained tag, local checkpoint, or none for random weights (default openai)")
    p.add_argument("--templates", help="CLIP prompt templates JSON (default: failmode/mining/templates.json)")
    p.add_argument("--attributor-option", "--option", dest="attributor_option", action="append", default=[],
                   metavar="KEY=VALUE", help="extra attributor option (VALUE parsed as JSON when it can be); repeatable")


def attributor_options(args: argparse.Namespace, flags: Mapping[str, str], extra_flag: str) -> dict[str, Any]:
    """Attributor options from the --clip-* style `flags` (dest -> option; CLIP only) and repeatable `extra_flag`.

    Unset flags are left out; `--clip-pretrained none` means random weights (smoke tests, benchmarks).
    """
    options = {opt: getattr(args, dest) for dest, opt in flags.items()} if args.attributor == "clip" else {}
    dest = extra_flag.lstrip("-").replace("-", "_")
    options = {k: v for k, v in options.items() if v is not None} | parse_options(getattr(args, dest), extra_flag)
    if options.get("pretrained") == "none":
        options["pretrained"] = None
    return options
