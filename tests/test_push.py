"""`failmode push`: validation before any network call, one clear line when offline/unauthenticated/unreachable,
and a tag only after every file is on the Hub."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from failmode.errors import FailmodeError, UsageError, ValidationError
from failmode.testing import build_tiny_dataset

# The real `failmode` entry point, restricted to the push command (other stages' modules are not needed).
_CLI = "import sys, failmode.cli as c; c.COMMANDS = ('push',); sys.exit(c.main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("push") / "tiny-debug"
    build_tiny_dataset(root, n=6, shard_size=6, with_table=False)
    return root


def _push_cli(args: list[str], tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    base = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE")}
    base.update({"HF_HOME": str(tmp_path / "hf-home"), "HF_ENDPOINT": "http://127.0.0.1:9"}, **env)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _CLI, "push", *args], capture_output=True, text=True, env=base,
                          timeout=60)
    return proc, time.monotonic() - start


def test_unreachable_hub_fails_fast_with_one_line(tiny_ds: Path, tmp_path: Path) -> None:
    proc, elapsed = _push_cli([str(tiny_ds), "--repo", "failmode/tiny-debug"], tmp_path, HF_TOKEN="hf_test_token")
    assert proc.returncode == 1
    assert elapsed < 30
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("failmode push: error: cannot push: the Hugging Face Hub at http://127.0.0.1:9 "
                               "is not reachable (ConnectionRefusedError")
    assert proc.stdout == ""


def test_no_token_fails_with_one_line(tiny_ds: Path, tmp_path: Path) -> None:
    proc, _ = _push_cli([str(tiny_ds), "--repo", "failmode/tiny-debug"], tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "failmode push: error: cannot push: not logged in to the Hugging Face Hub (run 'hf auth login' or set HF_TOKEN)"
    ]


def test_offline_mode_fails_with_one_line(tiny_ds: Path, tmp_path: Path) -> None:
    proc, _ = _push_cli([str(tiny_ds), "--repo", "failmode/tiny-debug"], tmp_path, HF_TOKEN="x", HF_HUB_OFFLINE="1")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["failmode push: error: cannot push: HF_HUB_OFFLINE=1 is set"]


def test_folder_is_validated_before_any_network_call(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    build_tiny_dataset(broken, n=6, shard_size=6, with_table=False)
    (broken / "data" / "baseline" / "train-00000-of-00001.parquet").unlink()
    proc, _ = _push_cli([str(broken), "--repo", "failmode/tiny-debug"], tmp_path)  # no token: validation comes first
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "failmode push: error: config 'baseline': data/baseline/train-00000-of-00001.parquet is missing "
        "(its marker train-00000-of-00001_stats.json exists)"
    ]


def test_tag_must_match_the_manifest_version(tiny_ds: Path, tmp_path: Path) -> None:
    proc, _ = _push_cli([str(tiny_ds), "--repo", "failmode/tiny-debug", "--tag", "v2.0.0"], tmp_path)
    assert proc.returncode == 2
    assert "tag v2.0.0 does not match the dataset's version 1.0.0" in proc.stderr


def _real_signature(method):
    """Fail if a fake method is called with arguments the real `HfApi` method would not accept."""
    import functools
    import inspect

    from huggingface_hub import HfApi as RealApi

    sig = inspect.signature(getattr(RealApi, method.__name__))

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        sig.bind(self, *args, **kwargs)
        return method(self, *args, **kwargs)

    return wrapper


class FakeApi:
    """Records the calls `push_dataset` makes; `drop` names local files the fake Hub 'loses'."""

    calls: list[str] = []
    tags: list[str] = []
    drop: set[str] = set()
    uploaded: set[str] = set()

    def __init__(self, token: str) -> None:
        assert token == "hf_test_token"

    @_real_signature
    def create_repo(self, repo_id: str, **kw) -> None:
        self.calls.append(f"create_repo private={kw['private']}")

    @_real_signature
    def list_repo_refs(self, repo_id: str, **kw):
        self.calls.append("list_repo_refs")
        return SimpleNamespace(tags=[SimpleNamespace(name=t) for t in self.tags])

    @_real_signature
    def upload_folder(self, *, folder_path: str, allow_patterns, ignore_patterns, delete_patterns, **kw) -> None:
        import fnmatch

        self.calls.append("upload_folder")
        root = Path(folder_path)
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        FakeApi.uploaded = {f for f in files if any(fnmatch.fnmatch(f, p) for p in allow_patterns)
                            and not any(fnmatch.fnmatch(f, p) for p in ignore_patterns)} - self.drop

    @_real_signature
    def repo_info(self, repo_id: str, **kw):
        return SimpleNamespace(sha="c0ffee" * 6 + "abcd")

    @_real_signature
    def list_repo_files(self, repo_id: str, **kw) -> list[str]:
        return sorted(self.uploaded)

    @_real_signature
    def create_tag(self, repo_id: str, *, tag: str, revision: str, **kw) -> None:
        self.calls.append(f"create_tag {tag} {revision[:6]}")


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    import failmode.dataset.publish as publish

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(publish, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls, FakeApi.tags, FakeApi.drop = [], [], set()
    return FakeApi


def test_push_uploads_then_tags(tiny_ds: Path, fake_hub, tmp_path: Path) -> None:
    from failmode.dataset import Manifest
    from failmode.dataset.publish import push_dataset

    (tiny_ds / "data" / "baseline" / ".train-00000-of-00001.parquet.x1y2.tmp").write_bytes(b"torn")
    url = push_dataset(tiny_ds, "failmode/tiny-debug", private=True)
    assert url == "http://127.0.0.1:9/datasets/failmode/tiny-debug/tree/v1.0.0"
    assert fake_hub.calls == ["create_repo private=True", "list_repo_refs", "upload_folder", "create_tag v1.0.0 c0ffee"]
    # exactly the manifest and the files it lists: card, shards, markers, _info.json, grids
    assert fake_hub.uploaded == {"failmode.json", *Manifest.load(tiny_ds).files}
    assert {"README.md", "assets/grid_test_resnet.png", "wds/test_resnet/_info.json",
            "data/test_resnet/train-00000-of-00001_stats.json"} <= fake_hub.uploaded
    assert not any(f.endswith(".tmp") for f in fake_hub.uploaded)


def test_incomplete_upload_is_never_tagged(tiny_ds: Path, fake_hub) -> None:
    from failmode.dataset.publish import push_dataset

    fake_hub.drop = {"wds/test_resnet/train-00000-of-00001.tar"}
    with pytest.raises(FailmodeError, match="incomplete: 1 file.*rerun the same command to resume"):
        push_dataset(tiny_ds, "failmode/tiny-debug")
    assert not any(c.startswith("create_tag") for c in fake_hub.calls)


def test_existing_tag_is_refused_before_uploading(tiny_ds: Path, fake_hub) -> None:
    from failmode.dataset.publish import push_dataset

    fake_hub.tags = ["v1.0.0"]
    with pytest.raises(FailmodeError, match="already has tag v1.0.0"):
        push_dataset(tiny_ds, "failmode/tiny-debug")
    assert "upload_folder" not in fake_hub.calls


def test_hub_errors_become_one_resumable_line(tiny_ds: Path, fake_hub, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx2

    from failmode.dataset.publish import push_dataset

    def fail(self, **kw):
        raise httpx2.ReadTimeout("timed out\nsecond line")

    monkeypatch.setattr(FakeApi, "upload_folder", fail)
    with pytest.raises(FailmodeError) as err:
        push_dataset(tiny_ds, "failmode/tiny-debug")
    assert str(err.value) == ("push to failmode/tiny-debug did not complete (ReadTimeout: timed out); nothing was "
                              "tagged, rerun the same command to resume")


def test_bad_repo_id_and_invalid_folder(tmp_path: Path) -> None:
    from failmode.dataset.publish import push_dataset

    with pytest.raises(UsageError, match="expected ORG/NAME"):
        push_dataset(tmp_path, "just-a-name")
    with pytest.raises(ValidationError, match=r"not a finalized failmode dataset \(no failmode.json"):
        push_dataset(tmp_path, "org/name")


@pytest.fixture
def loopback_server():
    """Start a loopback TCP server in a thread: `start("hang")` accepts and never answers, `start("empty")` answers
    every HTTP request with 200 and `{}` (not what the Hub says); returns its URL."""
    import http.server
    import socket
    import threading

    closers = []

    def start(kind: str) -> str:
        if kind == "hang":
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
            held: list[socket.socket] = []
            threading.Thread(target=lambda: [held.append(sock.accept()[0]) for _ in iter(int, 1)], daemon=True).start()
            closers.append(sock.close)
            return f"http://127.0.0.1:{sock.getsockname()[1]}"

        class Empty(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PUT = do_HEAD = _answer

            def log_message(self, *args: object) -> None:
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Empty)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        closers.append(srv.shutdown)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for close in closers:
        close()


def test_a_hung_hub_fails_the_push_within_the_request_timeout(tiny_ds: Path, tmp_path: Path, loopback_server) -> None:
    from failmode.cli import build_parser
    from failmode.hub import REQUEST_TIMEOUT_S

    assert REQUEST_TIMEOUT_S <= 15  # a hung Hub fails at defaults in about this long (measured: 19 s)
    assert build_parser().parse_args(["push", "x", "--repo", "a/b"]).timeout == REQUEST_TIMEOUT_S
    url = loopback_server("hang")
    proc, elapsed = _push_cli([str(tiny_ds), "--repo", "failmode/tiny-debug", "--timeout", "2"], tmp_path,
                              HF_TOKEN="hf_test_token", HF_ENDPOINT=url)
    assert proc.returncode == 1 and elapsed < 15, (elapsed, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]  # (other tests leave a warning line)
    assert len(lines) == 1 and "did not complete (ReadTimeout" in lines[0] and "nothing was tagged" in lines[0], lines
    assert "Traceback" not in proc.stderr


def test_a_server_that_is_not_the_hub_is_named_in_one_line(tiny_ds: Path, tmp_path: Path, loopback_server) -> None:
    url = loopback_server("empty")
    proc, _ = _push_cli([str(tiny_ds), "--repo", "failmode/tiny-debug"], tmp_path, HF_TOKEN="hf_test_token",
                        HF_ENDPOINT=url)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and f"the server at {url} does not answer as the Hugging Face Hub does" in lines[0], lines
    assert "check HF_ENDPOINT" in lines[0]


@pytest.fixture(scope="module")
def generated_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from failmode.testing import write_debug_dataset

    return write_debug_dataset(tmp_path_factory.mktemp("gen") / "gen-debug", class_names=["cat", "dog"],
                               images_per_mode=2, baseline_images_per_class=2)


@pytest.mark.parametrize("where", ["assets/grid_extra.png", "generation/stats/baseline/secret.json", "stray"])
def test_a_link_or_an_unlisted_file_is_refused_before_the_hub(generated_ds: Path, tmp_path: Path, where: str,
                                                              loopback_server) -> None:
    """A symlink pointing outside the folder (assets/, generation/stats/) or a stray file is named in one line and
    nothing reaches the (loopback) Hub; before, the link's target was uploaded."""
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(generated_ds, root)
    secret = tmp_path / "secret.txt"
    secret.write_text("hf_SECRET outside the dataset")
    if where == "stray":
        (root / "assets" / "notes.txt").write_text("not part of the dataset")
        rel, what = "assets/notes.txt", "is not listed in failmode.json"
    else:
        (root / where).symlink_to(secret)
        rel, what = where, "is a symbolic link; a dataset folder holds regular files only"
    url = loopback_server("empty")
    proc, _ = _push_cli([str(root), "--repo", "failmode/gen-debug"], tmp_path, HF_TOKEN="hf_test_token",
                        HF_ENDPOINT=url)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"failmode push: error: {root}: {rel} {what}"
                                                + (" (nothing outside it is published)" if where != "stray" else
                                                   "; remove it, or run `failmode finalize` if the manifest is out "
                                                   "of date")]
    assert proc.stdout == ""
    assert secret.read_text() == "hf_SECRET outside the dataset"  # left as it was


def test_the_manifest_lists_every_published_file(generated_ds: Path) -> None:
    from failmode.dataset import Manifest, layout, validate_dataset_folder
    from failmode.io import sha256_file

    m = validate_dataset_folder(generated_ds, check_hashes=True)
    files, links = layout.folder_files(generated_ds)
    assert links == [] and set(files) == {layout.MANIFEST_NAME, *m.files}
    assert {"README.md", "generation/plan.parquet", "assets/grid_baseline.png", "wds/baseline/_info.json"} <= set(m.files)
    assert any(f.startswith("generation/stats/baseline/") for f in m.files)
    assert all(sha256_file(generated_ds / f) == d for f, d in m.files.items())
    assert Manifest.load(generated_ds).files == m.files


@pytest.mark.parametrize("repo", ["failmode/..", "failmode/.", "failmode/a--b", "failmode/-x", "a/b/c"])
def test_a_repo_id_the_hub_refuses_is_refused_locally(tiny_ds: Path, tmp_path: Path, loopback_server, repo) -> None:
    """Before, `--repo failmode/..` passed and the push failed on the server, which was blamed."""
    url = loopback_server("empty")
    proc, _ = _push_cli([str(tiny_ds), "--repo", repo], tmp_path, HF_TOKEN="hf_test_token", HF_ENDPOINT=url)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"failmode push: error: invalid repository {repo!r}: expected ORG/NAME, each part letters, digits, '_', '-' "
        "or '.', not starting or ending with '-' or '.', without '--' or '..'"]
