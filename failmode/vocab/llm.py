"""A chat client for any OpenAI-compatible endpoint, with an on-disk response cache and retries with backoff.

Responses are cached under a key of (endpoint, model, full request): a rerun of the same build sends no
request, and an interrupted build resumes where it stopped (each response is written, atomically, as it
arrives, with its own check: `failmode.cache`). `ChatClient.stats` counts requests actually sent and cache hits.

No secret is kept: the endpoint is stored, logged and keyed only in its redacted form (`redact_url`: no userinfo, no
credential-like query parameter); the URL as given is used for the requests only.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from failmode.cache import load_json, save_json
from failmode.errors import FailmodeError, UsageError
from failmode.io import read_json, stable_hash, write_json

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """`llm/` under the toolkit's cache ($FAILMODE_CACHE_DIR, else $XDG_CACHE_HOME/failmode, else ~/.cache/failmode)."""
    from failmode.io import default_cache_dir as toolkit_cache_dir

    return toolkit_cache_dir() / "llm"


@dataclass
class Completion:
    """The text of one chat completion and why generation stopped ("stop", "length", ...)."""

    text: str
    finish_reason: str | None = None
    cached: bool = False


@dataclass
class ClientStats:
    """Requests sent to the endpoint, answers served from the cache, and retried failures."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Increment counters atomically (the client is used from several threads)."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


class StructuredOutputUnsupported(FailmodeError):
    """The endpoint rejected `response_format`; the caller may fall back to free text."""


#: per-request timeout and retries: a hung server fails in about 2 x 15 s plus backoff at defaults
DEFAULT_TIMEOUT = 15.0
DEFAULT_RETRIES = 1


class ChatClient:
    """Chat completions through the `openai` client against `endpoint`, cached on disk and retried with backoff."""

    def __init__(self, endpoint: str, model: str, *, api_key: str | None = None, cache_dir: str | Path | None = None,
                 timeout: float = DEFAULT_TIMEOUT, max_retries: int = DEFAULT_RETRIES, backoff: float = 1.0) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise UsageError(f"--endpoint must be an http(s) URL, got {endpoint!r}")
        if not timeout > 0:
            raise UsageError(f"--timeout must be > 0 seconds, got {timeout!r}")
        if max_retries < 0:
            raise UsageError(f"--retries must be >= 0, got {max_retries!r}")
        import openai

        self.endpoint = redact_url(endpoint).rstrip("/")  # what is stored, logged and keyed: no secret
        _hide_in_http_logs(url_secrets(endpoint))
        self.model = model
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.max_retries = max_retries
        self.backoff = backoff
        self.stats = ClientStats()
        # Retries are ours (with logging and a clear final error), so the openai client's own are off.
        self._client = openai.OpenAI(base_url=endpoint.rstrip("/"), api_key=api_key or "not-needed", timeout=timeout,
                                     max_retries=0)

    def cache_path(self, request: dict[str, Any]) -> Path:
        """Where the response to `request` is cached."""
        key = stable_hash({"endpoint": self.endpoint, "model": self.model, "request": request}, n=32)
        return self.cache_dir / key[:2] / f"{key}.json"

    def structured_rejection_path(self) -> Path:
        """Where a rejection of `response_format` by this endpoint and model is remembered (it holds for any prompt)."""
        key = stable_hash({"endpoint": self.endpoint, "model": self.model, "rejects": "response_format"}, n=32)
        return self.cache_dir / key[:2] / f"{key}.json"

    def complete(self, request: dict[str, Any]) -> Completion:
        """The completion for `request` (messages, temperature, seed, ...): from the cache, else from the endpoint."""
        rejection = self.structured_rejection_path()
        if "response_format" in request and rejection.exists():
            self.stats.add(cache_hits=1)
            raise StructuredOutputUnsupported(f"{self.endpoint}: {read_json(rejection)['rejected']} (cached)")
        path = self.cache_path(request)
        entry = load_json(path, path.stem, what="LLM cache")
        if entry is not None and isinstance(entry.get("text"), str):
            self.stats.add(cache_hits=1)
            return Completion(entry["text"], entry.get("finish_reason"), cached=True)
        try:
            result = self._send_with_retries(request)
        except StructuredOutputUnsupported as e:  # remembered per endpoint, so no later request asks again
            write_json(rejection, {"endpoint": self.endpoint, "model": self.model, "rejected": str(e)})
            raise
        if result.text.strip():  # an empty answer is never cached: a rerun asks again
            save_json(path, path.stem, {"endpoint": self.endpoint, "model": self.model, "request": request,
                                        "text": result.text, "finish_reason": result.finish_reason})
        return result

    def _send_with_retries(self, request: dict[str, Any]) -> Completion:
        import openai

        transient = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)
        for attempt in range(self.max_retries + 1):
            try:
                return self._send(request)
            except openai.BadRequestError as e:
                if "response_format" in request:
                    raise StructuredOutputUnsupported(f"response_format rejected: {_short(e)}") from None
                raise FailmodeError(f"{self.endpoint}: request rejected: {_short(e)}") from None
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise FailmodeError(f"{self.endpoint}: {_short(e)} (check --endpoint, --model and the API key)") from None
            except transient as e:
                if attempt == self.max_retries:
                    raise FailmodeError(f"{self.endpoint}: {_short(e)} after {attempt + 1} attempts") from None
                delay = self.backoff * (2 ** attempt) * (1 + random.random() / 2)
                log.warning("%s: %s; retrying in %.1fs", self.endpoint, _short(e), delay)
                self.stats.add(retries=1)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _send(self, request: dict[str, Any]) -> Completion:
        self.stats.add(requests=1)
        extra = {k: v for k, v in request.items() if k not in _STANDARD_ARGS}
        args = {k: v for k, v in request.items() if k in _STANDARD_ARGS}
        resp = self._client.chat.completions.create(model=self.model, extra_body=extra or None, **args)
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list):  # an HTML page or plain text, e.g. a proxy's error page
            raise FailmodeError(f"{self.endpoint}: the answer is not a chat completion (starts {str(resp)[:60]!r}); "
                                "check --endpoint (an OpenAI-compatible base URL ending in /v1)")
        if not choices:
            raise FailmodeError(f"{self.endpoint}: response without choices")
        choice = resp.choices[0]
        return Completion(choice.message.content or "", choice.finish_reason)

    def embed(self, texts: list[str], model: str) -> list[list[float]]:
        """Embeddings of `texts` from the endpoint's /embeddings route (cached like completions)."""
        request = {"embeddings": texts, "embedding_model": model}
        path = self.cache_path(request)
        entry = load_json(path, path.stem, what="embedding cache")
        if entry is not None and isinstance(entry.get("vectors"), list) and len(entry["vectors"]) == len(texts):
            self.stats.add(cache_hits=1)
            return entry["vectors"]
        self.stats.add(requests=1)
        resp = self._client.embeddings.create(model=model, input=texts)
        vectors = [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]
        save_json(path, path.stem, {"endpoint": self.endpoint, "request": request, "vectors": vectors})
        return vectors


#: query parameters that carry credentials (compared lower-case, '-' read as '_'), and name endings that do
CREDENTIAL_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token", "id_token", "refresh_token",
                               "auth", "authorization", "sig", "signature", "password", "passwd", "pwd", "secret",
                               "client_secret", "session", "sessionid", "code", "x_api_key", "subscription_key",
                               "x_amz_signature", "x_amz_credential", "x_amz_security_token", "x_goog_signature"})
_CREDENTIAL_ENDINGS = ("_key", "_token", "_secret", "_signature", "_sig", "_password", "_credential")


def redact_url(url: str) -> str:
    """`url` without userinfo (`user:password@`) and without credential-like query parameters (api-key, key, token,
    access_token, sig, ...): the form an endpoint is stored, logged and cached under."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _is_credential(k)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


def url_secrets(url: str) -> list[str]:
    """The secrets `redact_url` drops from `url`: its userinfo and the values of its credential-like parameters."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    found = [parts.netloc.rpartition("@")[0]] if "@" in parts.netloc else []
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if _is_credential(k) and v]
    return [f for f in found if f]


class _SecretFilter(logging.Filter):
    """Replaces given secrets by '***' in the records of the HTTP client libraries (they log request URLs)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if any(s in msg for s in self.secrets):
            for s in sorted(self.secrets, key=len, reverse=True):
                msg = msg.replace(s, "***")
            record.msg, record.args = msg, ()
        return True


_SECRET_FILTER = _SecretFilter()
_HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "openai._base_client")


def _hide_in_http_logs(secrets: list[str]) -> None:
    """Keep `secrets` out of what the HTTP client libraries log (`failmode -vv` shows their request lines)."""
    if not secrets:
        return
    _SECRET_FILTER.secrets.update(secrets)
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _SECRET_FILTER not in logger.filters:
            logger.addFilter(_SECRET_FILTER)


def _is_credential(name: str) -> bool:
    n = name.lower().replace("-", "_")
    return n in CREDENTIAL_PARAMS or n.endswith(_CREDENTIAL_ENDINGS)


_STANDARD_ARGS = frozenset({"messages", "temperature", "seed", "max_tokens", "stop", "top_p", "response_format",
                            "frequency_penalty", "presence_penalty", "n"})


def _short(e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return msg[:200]
