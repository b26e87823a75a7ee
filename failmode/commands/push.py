"""`failmode push`: publish a dataset folder to the Hugging Face Hub, tagged with its version."""

from __future__ import annotations

import argparse
import logging

HELP = "publish a dataset folder to the Hugging Face Hub and tag the revision with its version"
DESCRIPTION = (
    "Validate a dataset folder (card, manifest, every config's shards and their hashes) without any network call, "
    "then upload it to a Hub dataset repository (resumable: rerun the same command after an interruption) and tag "
    "the revision with the dataset's version, so load_dataset(repo, revision='vX.Y.Z') is stable. Needs a token "
    "('hf auth login' or HF_TOKEN); offline or unreachable, it fails in seconds with one line."
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `failmode push`."""
    from failmode.commands._common import add_dataset_folder_argument

    add_dataset_folder_argument(parser)
    parser.add_argument("--repo", required=True, metavar="ORG/NAME", help="Hub dataset repository")
    parser.add_argument("--tag", metavar="vX.Y.Z", help="tag to create (default and only accepted value: "
                        "v<version> from the folder's failmode.json)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    from failmode.hub import REQUEST_TIMEOUT_S

    parser.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT_S, metavar="S",
                        help="seconds any HTTP request may go without progress before the push fails "
                             f"(default {REQUEST_TIMEOUT_S:g}; a hung Hub fails in about that long)")


def run(args: argparse.Namespace) -> int:
    """Validate, upload and tag; print the tagged revision's URL."""
    from failmode.dataset.publish import push_dataset

    url = push_dataset(args.dir, args.repo, tag=args.tag, private=args.private, request_timeout=args.timeout)
    log.info("pushed and tagged: %s", url)
    print(url)
    return 0
