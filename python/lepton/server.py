"""lepton's HTTP server from Python: the Open Inference Protocol v2 REST API over every model of a
registry, lepton's management endpoints and Prometheus metrics. The server runs in C++ threads;
Python only starts and stops it."""
from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union

from . import _core
from .errors import InvalidArgument
from .logs import _start_log_bridge
from .policies import _Policy
from .registry import Registry


def _policy_json(policy: Union[None, str, Mapping[str, Any]]) -> str:
    if policy is None:
        return ""
    if isinstance(policy, _Policy):
        if policy.combiner is not None:
            raise InvalidArgument("a served model's ensemble cannot use a Python combiner function")
        policy = policy.spec
    text = policy if isinstance(policy, str) else json.dumps(policy)
    _core.policy_from_json(text)  # refuses a bad policy now, with the reason
    return text


def _served(models: Optional[Mapping[str, Any]]) -> list:
    out = []
    for name, spec in (models or {}).items():
        if spec is None:
            spec = {}
        elif isinstance(spec, str):
            spec = {"alias": spec[1:]} if spec.startswith("@") else {"versions": [spec]}
        if not isinstance(spec, Mapping):
            raise InvalidArgument(f"model {name!r}: expected '@alias', a version or a dict, got {spec!r}")
        unknown = set(spec) - {"alias", "versions", "policy"}
        if unknown:
            raise InvalidArgument(f"model {name!r}: unknown keys {sorted(unknown)}")
        versions = spec.get("versions") or []
        if isinstance(versions, str):
            versions = [versions]
        out.append(_core.ServedModel(str(name), spec.get("alias"), [str(v) for v in versions],
                                     _policy_json(spec.get("policy"))))
    return out


class Server:
    """A running lepton server. Use as a context manager, or call ``stop()``."""

    def __init__(self, core: "_core.Server"):
        self._core = core

    @property
    def url(self) -> str:
        host = self._core.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self._core.port}"

    @property
    def port(self) -> int:
        return self._core.port

    @property
    def token(self) -> str:
        """The bearer token of the management endpoints (generated when none was given)."""
        return self._core.token

    @property
    def models(self) -> list:
        return list(self._core.models)

    def request(self, method: str, path: str, body: Union[None, str, bytes, Mapping] = None,
                headers: Optional[Mapping[str, str]] = None) -> Tuple[int, Any, Dict[str, str]]:
        """Handles one request in process, without a socket: (status, parsed JSON or text, headers)."""
        if isinstance(body, Mapping):
            body = json.dumps(body)
        if isinstance(body, bytes):
            body = body.decode()
        status, raw, out_headers = self._core.handle(method, path, body or "", dict(headers or {}))
        text = raw.decode()
        try:
            return status, json.loads(text), out_headers
        except ValueError:
            return status, text, out_headers

    def stop(self) -> None:
        """Stops accepting connections, finishes the requests in progress, drains every version."""
        self._core.stop()

    def serve_forever(self, *, handle_signals: bool = True) -> None:
        """Blocks until SIGTERM or SIGINT (when ``handle_signals``), then stops gracefully."""
        done = threading.Event()
        previous = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: done.set())
        try:
            while not done.wait(0.2):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"lepton.Server({self.url}, models={self.models})"


def serve(
    registry: Union[Registry, str, os.PathLike, None] = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: Optional[str] = None,
    token_for_inference: bool = False,
    open_feedback: bool = False,
    models: Optional[Mapping[str, Any]] = None,
    only: bool = False,
    threads: Optional[int] = None,
    max_batch_size: int = 1,
    max_queue_delay_ms: float = 0.0,
    max_queue: int = 1024,
    max_body_bytes: int = 64 << 20,
    max_buffered_bytes: int = 512 << 20,
    read_timeout: float = 5.0,
    request_timeout: Optional[float] = None,
    http_threads: int = 64,
    io_threads: int = 2,
    busy_poll_us: float = 100.0,
) -> Server:
    """Starts serving ``registry`` over HTTP and returns the running ``Server``.

    Every model of the registry is served at its latest version, unless ``models`` says otherwise:
    ``{"name": "@production"}`` follows an alias, ``{"name": "v2"}`` serves a version, and
    ``{"name": {"versions": [...], "alias": ..., "policy": {...}}}`` sets a policy (JSON as
    ``PUT /v2/lepton/models/{m}/policy`` takes it). With ``only=True`` only ``models`` are served.
    The token defaults to ``$LEPTON_TOKEN``, else one is generated (``Server.token``).
    ``request_timeout`` (seconds) is the deadline of requests that do not set their own
    (``parameters.timeout``); by default they have none. ``io_threads`` event loops serve the
    connections, each polling ``busy_poll_us`` microseconds after its last request before it
    sleeps (0: never polls); ``http_threads`` bounds the threads in all, helpers of loops that a
    slow model blocks included.

    Feedback (``POST /v2/lepton/models/{m}/feedback``) needs the token: rewards steer traffic and,
    through an A/B test or a bandit whose switches move an alias, move production.
    ``open_feedback=True`` takes feedback without the token where it cannot move an alias. ``read_timeout`` bounds
    each request from its first byte to its last; ``max_buffered_bytes`` bounds the request and
    response bytes held across all connections (a request beyond it gets 503 before its body is
    read)."""
    if registry is None or isinstance(registry, (str, os.PathLike)):
        registry = Registry(registry)
    if not isinstance(registry, Registry):
        raise InvalidArgument(f"registry must be a lepton.Registry or a path, not {type(registry).__name__}")
    if token is None:
        token = os.environ.get("LEPTON_TOKEN", "")
    _start_log_bridge()
    core = _core.Server(
        registry._core, host, int(port), token, bool(token_for_inference), int(max_body_bytes),
        float(read_timeout), int(http_threads), float(request_timeout or 0.0), not only, _served(models),
        int(threads or 0), int(max_batch_size), float(max_queue_delay_ms) / 1000.0, int(max_queue),
        int(io_threads), float(busy_poll_us) * 1e-6, bool(open_feedback), int(max_buffered_bytes),
    )
    core.start()
    return Server(core)
