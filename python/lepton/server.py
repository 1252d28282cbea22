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

#: The definition of lepton's gRPC service (``inference.GRPCInferenceService``), to generate a
#: client from: ``python -m grpc_tools.protoc -I DIR --python_out=. --grpc_python_out=. PROTO``.
PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inference.proto")

#: The dashboard's built files, shipped inside the package (built from ``web/`` by the bootstrap).
UI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui")


def _ui_dir(ui: Union[bool, str, "os.PathLike[str]", None]) -> Optional[str]:
    """The folder the server serves the dashboard from, or "" for none."""
    if ui is None or ui is True:
        if os.path.isfile(os.path.join(UI_DIR, "index.html")):
            return UI_DIR
        if ui is True:
            raise InvalidArgument(f"this lepton package has no built dashboard in {UI_DIR} (run scripts/bootstrap)")
        return ""
    if ui is False:
        return ""
    return os.fspath(ui)


def _model_spec(name: str, spec: Any) -> Any:
    """A served model's spec as JSON takes it: policy objects become their specs."""
    if isinstance(spec, Mapping) and isinstance(spec.get("policy"), _Policy):
        policy = spec["policy"]
        if policy.combiner is not None:
            raise InvalidArgument(f"model {name!r}: a served ensemble cannot use a Python combiner function")
        return {**spec, "policy": policy.spec}
    return spec


def _config(**settings: Any) -> str:
    """The server's JSON configuration from keyword settings; None leaves the core's default."""
    models = settings.pop("models", None)
    config = {k: v for k, v in settings.items() if v is not None}
    if models is not None:
        config["models"] = {str(name): _model_spec(str(name), spec) for name, spec in dict(models).items()}
    try:
        return json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"the server configuration cannot be written as JSON: {e}") from None


class Server:
    """A running lepton server. Use as a context manager, or call ``stop()``."""

    def __init__(self, core: "_core.Server", ui: bool = False):
        self._core = core
        self._ui = ui

    @property
    def url(self) -> str:
        host = self._core.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self._core.port}"

    @property
    def ui_url(self) -> Optional[str]:
        """The dashboard's address, or None when this server serves none."""
        return f"{self.url}/ui/" if self._ui else None

    @property
    def port(self) -> int:
        return self._core.port

    @property
    def grpc_port(self) -> Optional[int]:
        """The port of the protocol's gRPC service, or None when the server speaks no gRPC."""
        port = self._core.grpc_port
        return None if port < 0 else port

    @property
    def grpc_target(self) -> Optional[str]:
        """``host:port`` of the gRPC service, as ``grpc.insecure_channel`` takes it; None without gRPC."""
        if self.grpc_port is None:
            return None
        host = self._core.host
        return f"{'[' + host + ']' if ':' in host else host}:{self.grpc_port}"

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
    config: Union[str, os.PathLike, None] = None,
    host: Optional[str] = None,
    port: Optional[int] = None,
    grpc_port: Optional[int] = None,
    token: Optional[str] = None,
    token_for_inference: Optional[bool] = None,
    open_feedback: Optional[bool] = None,
    models: Optional[Mapping[str, Any]] = None,
    only: Optional[bool] = None,
    threads: Optional[int] = None,
    max_batch_size: Optional[int] = None,
    max_queue_delay_ms: Optional[float] = None,
    max_queue: Optional[int] = None,
    max_body_bytes: Optional[int] = None,
    max_buffered_bytes: Optional[int] = None,
    read_timeout: Optional[float] = None,
    request_timeout: Optional[float] = None,
    http_threads: Optional[int] = None,
    io_threads: Optional[int] = None,
    busy_poll_us: Optional[float] = None,
    ui: Union[bool, str, "os.PathLike[str]", None] = None,
    **deployment: Any,
) -> Server:
    """Starts serving ``registry`` over HTTP and returns the running ``Server``.

    The settings are the server's JSON configuration, read by the C++ core with its defaults
    (``lepton._core.server_config_defaults()``); ``config`` names a JSON file of them, which the
    keyword settings override. Every model of the registry is served at its latest version, unless
    ``models`` says otherwise: ``{"name": "@production"}`` follows an alias, ``{"name": "v2"}``
    serves a version, and ``{"name": {"versions": [...], "alias": ..., "policy": {...}}}`` sets a
    policy (its JSON, as ``PUT /v2/lepton/models/{m}/policy`` takes it, or a policy object). With
    ``only=True`` only ``models`` are served. The host defaults to 127.0.0.1 and the port to 8000
    (0: any free port). ``grpc_port`` serves the protocol's gRPC service
    (``inference.GRPCInferenceService``, ``cpp/src/protocol/inference.proto``) on that port too (0:
    any free one, ``Server.grpc_port``), over the same models, policies, metrics and token (sent
    as ``authorization`` metadata); by default there is none. The token defaults to ``$LEPTON_TOKEN``, else one is generated
    (``Server.token``). ``request_timeout`` (seconds) is the deadline of requests that do not set
    their own (``parameters.timeout``); by default they have none. ``io_threads`` event loops (2)
    serve the connections, each polling ``busy_poll_us`` microseconds (100) after its last request
    before it sleeps (0: never polls); ``http_threads`` (64) bounds the threads in all, helpers of
    loops that a slow model blocks included. ``threads``, ``max_batch_size``,
    ``max_queue_delay_ms``, ``max_queue`` and any other deployment option (as ``Deployment``
    takes them) apply to every served model. ``memory_budget`` (bytes or a size such as
    ``"2GB"``) puts every model under one budget: every version of every model is served (those
    registered later too) and loads on its first request, and the least recently used idle versions
    are unloaded to make room; the repository's ``load`` and ``unload`` then pin and unpin a
    version (``parameters.version``, else the primary).

    Feedback (``POST /v2/lepton/models/{m}/feedback``) needs the token: rewards steer traffic and,
    through an A/B test or a bandit whose switches move an alias, move production.
    ``open_feedback=True`` takes feedback without the token where it cannot move an alias.
    ``read_timeout`` (5 s) bounds each request from its first byte to its last;
    ``max_buffered_bytes`` (512 MiB) bounds the request and response bytes held across all
    connections (a request beyond it gets 503 before its body is read), ``max_body_bytes``
    (64 MiB) one request's body.

    The dashboard is served at ``/ui/`` (``Server.ui_url``) from the files built into the package;
    ``ui=False`` serves none, and a folder serves that build instead. It reads and changes the
    server through the management API, so it asks for the token."""
    if registry is None or isinstance(registry, (str, os.PathLike)):
        registry = Registry(registry)
    if not isinstance(registry, Registry):
        raise InvalidArgument(f"registry must be a lepton.Registry or a path, not {type(registry).__name__}")
    if token is None and os.environ.get("LEPTON_TOKEN"):
        token = os.environ["LEPTON_TOKEN"]
    text = _config(
        host=host, port=port, grpc_port=grpc_port, token=token, token_for_inference=token_for_inference, open_feedback=open_feedback,
        models=models, only=only, threads=threads, max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms, max_queue=max_queue, max_body_bytes=max_body_bytes,
        max_buffered_bytes=max_buffered_bytes, read_timeout=read_timeout, request_timeout=request_timeout,
        http_threads=http_threads, io_threads=io_threads, busy_poll_us=busy_poll_us, ui_dir=_ui_dir(ui),
        **deployment,
    )
    _start_log_bridge()
    core = _core.Server(registry._core, text, os.fspath(config) if config is not None else "")
    core.start()
    return Server(core, ui=bool(json.loads(text).get("ui_dir")))
