"""HTTP client for the Immich endpoints the stage step uses.

* ``requests.Session`` per API key, connect/read timeouts, TLS verification always on
  (``ca_bundle`` points at a private CA; there is no switch to turn verification off).
* 5xx, timeouts, connection errors and truncated bodies are retried with exponential
  backoff and jitter; 429 waits for ``Retry-After``; 401/403 stop at once, naming the key's
  environment variable and the permission the endpoint needs; other 4xx are per-request
  errors (an asset deleted meanwhile), not retried.
* A circuit breaker shared by every worker (and every key of one server) counts consecutive
  failed attempts; at ``breaker_errors`` it probes ``GET /api/server/ping`` once, and if the
  probe fails too every worker stops with ``ImmichOutage`` (the caller saves its state).
* The API key lives only in the session's headers: it is never formatted into a message,
  a log record, a ``repr`` or an exception.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from facesets.options import source_block

log = logging.getLogger(__name__)
T = TypeVar("T")

# x-immich-permission of each endpoint, from the OpenAPI spec (v3.1.0).
PERMISSIONS = {
    ("POST", "/search/metadata"): "asset.read",
    ("GET", "/server/version"): "(none)",
    ("GET", "/faces"): "face.read",
    ("GET", "/assets/{id}/original"): "asset.download",
}
CHUNK = 1 << 16


class ImmichError(RuntimeError):
    """Base class; messages never contain the API key."""


class ImmichAuthError(ImmichError):
    """401/403: the key is wrong or lacks a permission. Stops the run at once."""


class ImmichOutage(ImmichError):
    """The circuit breaker tripped and the ping probe failed too."""


class ImmichTLSError(ImmichError):
    """TLS verification failed (wrong host, self-signed or private CA without ca_bundle)."""


class ImmichTransientError(ImmichError):
    """One request still failed after every retry (the asset is retried on the next run)."""


class ImmichRequestError(ImmichError):
    """A non-retryable answer for one request (e.g. 404: the asset is gone)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# How the client works, not what a source sets: no config key sets these (tests may override them).
CONNECT_TIMEOUT_S = 10.0
BACKOFF_MAX_S = 30.0
MAX_RETRY_AFTER_S = 300.0  # one wait at most this long, whatever Retry-After says
MAX_RATE_LIMITED = 50  # 429s tolerated for one request before giving up
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ClientOptions:
    """What a client needs; no defaults here: ``client_options`` fills them from the schema."""

    timeout_s: float
    connect_timeout_s: float
    retries: int
    backoff_s: float
    backoff_max_s: float
    max_retry_after_s: float
    max_rate_limited: int
    max_rate_limit_wait_s: float  # all Retry-After waits of one request together
    breaker_errors: int
    probe_timeout_s: float
    ca_bundle: str | None
    pool_size: int


def client_options(immich: Mapping[str, Any] | None = None, **override: Any) -> ClientOptions:
    """Options from a source's ``immich`` block (config/schemas/source.schema.yaml, its defaults
    filled in; the server and key names are not needed here); ``override`` sets any field."""
    block = source_block("immich", immich)
    values: dict[str, Any] = {
        "timeout_s": float(block["timeout_s"]),
        "connect_timeout_s": CONNECT_TIMEOUT_S,
        "retries": block["retries"],
        "backoff_s": float(block["backoff_s"]),
        "backoff_max_s": BACKOFF_MAX_S,
        "max_retry_after_s": MAX_RETRY_AFTER_S,
        "max_rate_limited": MAX_RATE_LIMITED,
        "max_rate_limit_wait_s": float(block["max_rate_limit_wait_s"]),
        "breaker_errors": block["breaker_errors"],
        "probe_timeout_s": PROBE_TIMEOUT_S,
        "ca_bundle": block["ca_bundle"],
        "pool_size": max(16, 2 * block["workers"]),  # a connection per worker, downloads and lookups
    }
    return ClientOptions(**{**values, **override})


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


class CircuitBreaker:
    """Consecutive failures across all workers; one probe decides between go on and stop."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self._lock = threading.Lock()
        self._consecutive = 0
        self._probing = False
        self.tripped = False
        self.reason = ""

    def success(self) -> None:
        with self._lock:
            self._consecutive = 0

    def failure(self) -> bool:
        """Count one failure; True when the caller must probe the server now."""
        with self._lock:
            self._consecutive += 1
            if self._consecutive >= self.threshold and not self._probing and not self.tripped:
                self._probing = True
                return True
            return False

    def probe_result(self, ok: bool, reason: str) -> None:
        with self._lock:
            self._probing = False
            if ok:
                self._consecutive = 0
            else:
                self.tripped = True
                self.reason = reason

    @property
    def consecutive(self) -> int:
        return self._consecutive


def normalize_base_url(url: str) -> str:
    """``https://host[:port][/prefix]`` without a trailing ``/`` or ``/api``; raises ValueError."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Immich URL must look like https://host[:port]: got scheme {parts.scheme or '(none)'!r}")
    if parts.username or parts.password:
        raise ValueError("Immich URL must not contain credentials; put the API key in its own variable")
    path = parts.path.rstrip("/")
    if path.endswith("/api"):
        path = path[: -len("/api")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class Download:
    size: int
    sha1_b64: str
    sha256: str
    length_checked: bool = False  # the body's size matched the server's Content-Length


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret replaced by ``***`` (a server may echo the key in an error)."""
    for s in secrets:
        if s and s in text:
            text = text.replace(s, "***")
    return text


def parse_version(body: Any) -> tuple[int, int, int]:
    """``GET /api/server/version`` -> (major, minor, patch); ValueError when not that shape."""
    if not isinstance(body, dict):
        raise ValueError("server/version: expected an object")
    try:
        return tuple(int(body[k]) for k in ("major", "minor", "patch"))  # type: ignore[return-value]
    except (KeyError, TypeError, ValueError):
        raise ValueError("server/version: major/minor/patch missing or not numbers") from None


class ImmichClient:
    """One API key on one server. Thread-safe: workers share it (and its connection pool)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        key_name: str,
        options: ClientOptions | None = None,
        breaker: CircuitBreaker | None = None,
        stats: ClientStats | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise ValueError(f"the API key in ${key_name} is empty")
        self.base_url = normalize_base_url(base_url)
        self.key_name = key_name
        self.opts = options or client_options()
        self.breaker = breaker or CircuitBreaker(self.opts.breaker_errors)
        self.stats = stats or ClientStats()
        self._sleep = sleep
        self._rng = random.Random()
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=self.opts.pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"x-api-key": api_key, "Accept": "application/json"})
        self._secrets = (api_key,)  # only for redaction: never formatted into anything
        self._session.verify = self.opts.ca_bundle or True
        # Environment settings would override `verify` (requests lets REQUESTS_CA_BUNDLE win over
        # Session.verify) and add netrc credentials: off. Proxies from the environment still apply.
        self._session.trust_env = False
        self._session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        if urlsplit(self.base_url).scheme == "http" and urlsplit(self.base_url).hostname not in (
            "localhost",
            "127.0.0.1",
            "::1",
        ):
            log.warning("Immich URL %s is plain http: the API key travels unencrypted", self.base_url)

    def __repr__(self) -> str:
        return f"ImmichClient({self.base_url!r}, key from ${self.key_name})"

    def close(self) -> None:
        self._session.close()

    def redaction_secrets(self) -> tuple[str, ...]:
        """What stored messages must never contain (for ``State``'s redaction; never printed)."""
        return self._secrets

    # -- the endpoints -------------------------------------------------------------------

    def ping(self) -> bool:
        """``GET /api/server/ping`` without the key, no retries: True when it answers pong."""
        try:
            r = self._session.get(
                self.base_url + "/api/server/ping",
                headers={"x-api-key": None},
                timeout=(self.opts.connect_timeout_s, self.opts.probe_timeout_s),
            )
            with r:
                return r.status_code == 200 and r.json().get("res") == "pong"
        except (requests.RequestException, ValueError, AttributeError):
            return False

    def search_metadata(self, body: dict[str, Any]) -> Any:
        return self._call("POST", "/search/metadata", "/search/metadata", json_body=body)

    def server_version(self) -> tuple[int, int, int] | None:
        """``GET /api/server/version``; None when the server has no such endpoint (404)."""
        try:
            body = self._call("GET", "/server/version", "/server/version")
        except ImmichRequestError as exc:
            if exc.status == 404:
                return None
            raise
        try:
            return parse_version(body)
        except ValueError as exc:
            from facesets.immich.models import ResponseShapeError

            raise ResponseShapeError(str(exc)) from None

    def faces(self, asset_id: str) -> Any:
        return self._call("GET", "/faces", "/faces", params={"id": asset_id})

    def download_original(self, asset_id: str, dest: Path) -> Download:
        """Stream the original into ``dest`` (replaced on retry), hashing as it goes."""

        def consume(resp: requests.Response) -> Download:
            sha1, sha256, size = hashlib.sha1(), hashlib.sha256(), 0
            with open(dest, "wb") as fh:
                for chunk in resp.iter_content(CHUNK):
                    fh.write(chunk)
                    sha1.update(chunk)
                    sha256.update(chunk)
                    size += len(chunk)
            expected = resp.headers.get("Content-Length")
            if expected is not None and expected.isdigit() and int(expected) != size:
                raise requests.exceptions.ChunkedEncodingError(f"body truncated: {size} of {expected} bytes")
            self.stats.add(bytes=size)
            checked = expected is not None and expected.isdigit()
            return Download(size, base64.b64encode(sha1.digest()).decode(), sha256.hexdigest(), checked)

        return self._call(
            "GET",
            f"/assets/{asset_id}/original",
            "/assets/{id}/original",
            stream=True,
            consume=consume,
            accept="application/octet-stream",
        )

    # -- the retry loop ------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        base = min(self.opts.backoff_max_s, self.opts.backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + self._rng.random() / 2)

    def _check_breaker(self) -> None:
        if self.breaker.tripped:
            raise ImmichOutage(f"Immich at {self.base_url} is unreachable ({self.breaker.reason})")

    def _failed(self, what: str) -> None:
        """One failed attempt: count it; probe when the breaker says so."""
        if self.breaker.failure():
            ok = self.ping()
            reason = (
                f"{self.breaker.threshold} consecutive request failures, the last: {what}; "
                f"GET /api/server/ping {'answered' if ok else 'failed too'}"
            )
            log.warning("circuit breaker: %s", reason)
            self.breaker.probe_result(ok, reason)
        self._check_breaker()

    def _auth_error(self, status: int, method: str, template: str) -> ImmichAuthError:
        perm = PERMISSIONS.get((method, template), "?")
        if status == 401:
            return ImmichAuthError(
                f"Immich at {self.base_url} rejected the API key in ${self.key_name} (401 Unauthorized): "
                "the key is wrong, expired or deleted; create one under Account Settings > API Keys"
            )
        return ImmichAuthError(
            f"the API key in ${self.key_name} lacks the permission '{perm}' needed for "
            f"{method} /api{template} (403 Forbidden); give the key '{perm}' "
            "(the stage step needs asset.read, face.read and asset.download)"
        )

    def _call(
        self,
        method: str,
        path: str,
        template: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        stream: bool = False,
        consume: Callable[[requests.Response], T] | None = None,
        accept: str = "application/json",
    ) -> Any:
        url = self.base_url + "/api" + path
        what_req = f"{method} /api{path}"
        attempt, limited, waited = 0, 0, 0.0
        while True:
            self._check_breaker()
            self.stats.add(requests=1)
            failure = ""
            try:
                resp = self._session.request(
                    method,
                    url,
                    json=json_body,
                    params=params,
                    stream=stream,
                    headers={"Accept": accept},
                    timeout=(self.opts.connect_timeout_s, self.opts.timeout_s),
                )
            except requests.exceptions.SSLError as exc:
                raise ImmichTLSError(
                    redact(
                        f"TLS verification of {self.base_url} failed ({_short(exc)}); if the server uses a private "
                        "CA, set immich.ca_bundle to its certificate file (verification cannot be turned off)",
                        self._secrets,
                    )
                ) from None
            except requests.exceptions.Timeout:
                failure = f"{what_req}: timed out"
            except requests.exceptions.RequestException as exc:
                failure = f"{what_req}: connection failed ({_short(exc)})"
            else:
                with resp:
                    status = resp.status_code
                    if status in (401, 403):
                        raise self._auth_error(status, method, template) from None
                    if status == 429:
                        self.breaker.success()  # the server is up, only busy
                        limited += 1
                        self.stats.add(rate_limited=1)
                        if limited > self.opts.max_rate_limited:
                            raise ImmichTransientError(f"{what_req}: still rate limited after {limited} tries")
                        asked = retry_after_seconds(resp.headers.get("Retry-After"))
                        wait = self._backoff(min(limited, 6)) if asked is None else asked
                        budget = self.opts.max_rate_limit_wait_s - waited
                        if budget <= 0:
                            raise ImmichTransientError(
                                f"{what_req}: still rate limited after waiting {waited:.0f} s in all, the cap on "
                                f"Retry-After waits per request (immich.max_rate_limit_wait_s = "
                                f"{self.opts.max_rate_limit_wait_s:.0f} s)"
                            )
                        capped = min(wait, self.opts.max_retry_after_s, budget)
                        if asked is not None and capped < asked:
                            log.warning(
                                "%s: rate limited, the server asks to wait %.0f s; waiting %.0f s (at most %.0f s "
                                "per wait and %.0f s per request in all)",
                                what_req,
                                asked,
                                capped,
                                self.opts.max_retry_after_s,
                                self.opts.max_rate_limit_wait_s,
                            )
                        self._sleep(capped)
                        waited += capped
                        continue
                    if status >= 500:
                        failure = f"{what_req}: HTTP {status}"
                    elif status >= 400:
                        self.breaker.success()
                        msg = redact(f"{what_req}: HTTP {status} {_error_message(resp)}", self._secrets)
                        raise ImmichRequestError(msg, status)
                    else:
                        try:
                            result = consume(resp) if consume else resp.json()
                        except (requests.exceptions.RequestException, ValueError) as exc:
                            failure = f"{what_req}: incomplete or invalid body ({_short(exc)})"
                        else:
                            self.breaker.success()
                            return result
            attempt += 1
            self.stats.add(retries=1)
            log.debug("attempt %d failed: %s", attempt, failure)
            self._failed(failure)
            if attempt > self.opts.retries:
                raise ImmichTransientError(redact(f"{failure} (gave up after {attempt} attempts)", self._secrets))
            self._sleep(self._backoff(attempt))


def _short(exc: BaseException) -> str:
    """An exception as one short line (requests' messages can be long nested reprs)."""
    text = str(exc).replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


def _error_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
        msg = body.get("message") if isinstance(body, dict) else None
    except ValueError:
        msg = None
    return f"({str(msg)[:200]})" if msg else ""
