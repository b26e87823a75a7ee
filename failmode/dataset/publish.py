"""Publish a finished dataset folder to the Hugging Face Hub and tag the revision with its version.

Order of work: validate the folder (no network) -> refuse offline mode, a missing token or an unreachable Hub in
one line (a TCP probe of a few seconds, before huggingface_hub's own retries) -> create the repository -> refuse a
tag that already exists -> upload in one `upload_folder` commit (a rerun does not send again the large files the
Hub already received) -> check every local file is on the Hub -> tag. The tag is created last: a push that stopped
half-way is never reported or tagged as done.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from failmode.dataset import layout
from failmode.dataset.manifest import REPO_ID_RE, Manifest
from failmode.dataset.validate import validate_dataset_folder
from failmode.errors import FailmodeError, UsageError
from failmode.hub import REQUEST_TIMEOUT_S, hub_endpoint, hub_offline, hub_unreachable_reason

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
# Remote files under these folders that the new version does not have are deleted (stale shards would
# otherwise be picked up by the card's `data/<config>/<split>-*.parquet` patterns).
MANAGED_PATTERNS = ["data/*", "wds/*", "assets/*", "generation/*"]


def push_dataset(root: str | os.PathLike[str], repo_id: str, *, tag: str | None = None, private: bool = False,
                 request_timeout: float = REQUEST_TIMEOUT_S) -> str:
    """Upload the dataset folder `root` to the dataset repo `repo_id`, tag it, and return the tagged revision's URL.

    `tag` defaults to `v<manifest version>` and must equal it. Raises FailmodeError with one line on any failure.
    """
    if not REPO_ID_RE.match(repo_id):
        raise UsageError(f"invalid repository {repo_id!r}: expected ORG/NAME, each part letters, digits, '_', '-' "
                         "or '.', not starting or ending with '-' or '.', without '--' or '..'")
    manifest = validate_dataset_folder(root, check_hashes=True)
    tag = tag or manifest.tag
    if tag != manifest.tag:
        raise UsageError(f"tag {tag} does not match the dataset's version {manifest.version} (failmode.json); "
                         f"build the dataset with the version you want to publish")
    if manifest.repo_id and manifest.repo_id != repo_id:
        log.warning("the card's loading examples name %s, but you push to %s", manifest.repo_id, repo_id)
    token = preflight()
    with hub_request_timeout(request_timeout), _hub_errors(repo_id):
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if tag in {t.name for t in api.list_repo_refs(repo_id, repo_type="dataset").tags}:
            raise FailmodeError(f"{repo_id} already has tag {tag}; tags are never moved: bump the version and rebuild")
        # exactly the files the manifest lists (validated above: regular files, no link, nothing unlisted)
        api.upload_folder(repo_id=repo_id, folder_path=str(root), repo_type="dataset",
                          commit_message=f"{manifest.name} {tag}", allow_patterns=upload_list(manifest),
                          ignore_patterns=["*.tmp"], delete_patterns=MANAGED_PATTERNS)
        sha = api.repo_info(repo_id, repo_type="dataset").sha
        _check_remote(api, repo_id, sha, root, manifest.files)
        api.create_tag(repo_id, tag=tag, revision=sha, repo_type="dataset",
                       tag_message=f"{manifest.name} {manifest.version} (failmode {manifest.failmode_version})")
    return f"{hub_endpoint()}/datasets/{repo_id}/tree/{tag}"


def upload_list(manifest: Manifest) -> list[str]:
    """What a push uploads: the manifest and every file it lists, by exact path."""
    return sorted({layout.MANIFEST_NAME, *manifest.files})


def preflight() -> str:
    """Return the Hub token, or raise one clear line: offline mode, no token, or Hub not reachable."""
    if hub_offline():
        raise FailmodeError("cannot push: HF_HUB_OFFLINE=1 is set")
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise FailmodeError("cannot push: not logged in to the Hugging Face Hub (run 'hf auth login' or set HF_TOKEN)")
    reason = hub_unreachable_reason()
    if reason is not None:
        raise FailmodeError(f"cannot push: the Hugging Face Hub at {hub_endpoint()} is not reachable ({reason}); "
                            "nothing was uploaded")
    return token


@contextlib.contextmanager
def hub_request_timeout(seconds: float) -> Iterator[None]:
    """Give huggingface_hub's HTTP client a per-request timeout while the block runs (its default is none)."""
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)

    def factory() -> Any:
        client = previous()
        client.timeout = httpx2.Timeout(seconds, connect=min(seconds, CONNECT_TIMEOUT_S))
        return client

    set_client_factory(factory)
    try:
        yield
    finally:
        set_client_factory(previous)


@contextlib.contextmanager
def _hub_errors(repo_id: str) -> Iterator[None]:
    """Turn huggingface_hub / httpx2 failures into one line that says the push is incomplete and can be resumed."""
    try:
        yield
    except FailmodeError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        if getattr(e, "response", None) is not None:  # an HTTP error that is also a ValueError
            raise _push_error(e, repo_id) from e
        raise FailmodeError(f"push to {repo_id}: the server at {hub_endpoint()} does not answer as the Hugging Face "
                            f"Hub does (unexpected reply, {type(e).__name__}: {e}); check HF_ENDPOINT. Nothing was "
                            "tagged") from e
    except Exception as e:  # HfHubHTTPError, httpx2.TransportError, OfflineModeIsEnabled, OSError, ...
        raise _push_error(e, repo_id) from e


def _push_error(e: Exception, repo_id: str) -> FailmodeError:
    """The one-line error of a push that stopped on an HTTP or transport failure."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    hint = {401: "the token was rejected", 403: f"the token may not write to {repo_id}"}.get(status, "")
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return FailmodeError(f"push to {repo_id} did not complete ({type(e).__name__}: {first}"
                         f"{'; ' + hint if hint else ''}); nothing was tagged, rerun the same command to resume")


def _check_remote(api: Any, repo_id: str, sha: str, root: str | os.PathLike[str], files: dict[str, str]) -> None:
    remote = set(api.list_repo_files(repo_id, repo_type="dataset", revision=sha))
    local = set(files) | {layout.CARD_NAME, layout.MANIFEST_NAME}
    missing = sorted(local - remote)
    if missing:
        raise FailmodeError(f"push to {repo_id} is incomplete: {len(missing)} file(s) are not on the Hub "
                            f"(e.g. {missing[0]}); nothing was tagged, rerun the same command to resume")
    log.info("all %d files of %s are on the Hub at %s", len(local), Path(root).name, sha[:12])
