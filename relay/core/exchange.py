"""The contracts between the relay core and its edges, and the per-stream settings.

Adapters (HTTP/1.1, HTTP/2, HTTP/3) implement `ClientSide`; upstream connections
implement `UpstreamExchange` and deliver to a `ResponseSink`. Nothing here knows an
HTTP version.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from relay.core.body_policy import BodyPolicy
from relay.core.errors import RelayError
from relay.core.journal import Journal
from relay.core.providers import Provider
from relay.core.retry import RetryPolicy

Headers = list[tuple[bytes, bytes]]

#: Upstream response heads are small; anything larger is a broken upstream.
MAX_RESPONSE_HEAD = 256 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One upstream base URL, split into what the connection pool needs."""

    url: str
    tls: bool
    host: str
    port: int
    base_path: str

    @property
    def authority(self) -> bytes:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode()


class PooledConnection(Protocol):
    """An HTTP/1.1 upstream connection as its pool keeps it between exchanges."""

    closed: bool

    def abort(self) -> None: ...


class ConnectionPool(Protocol):
    """What an upstream connection needs of the pool that made it (relay/upstream/pool.py):
    declared here so that connections and pool do not import each other."""

    @property
    def url(self) -> str: ...
    @property
    def target(self) -> UpstreamTarget: ...
    def release(self, connection: PooledConnection) -> None: ...
    def forget(self, connection: object) -> None: ...


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A client request as the core sees it: HTTP-version-neutral, names lower-case."""

    method: bytes
    target: bytes
    headers: Headers
    client_ip: str | None
    #: A request body follows the head (its length may be unknown: chunked, HTTP/2).
    has_body: bool = False
    #: The client's HTTP version ("1.0", "1.1", "2", "3"), for metrics and the log.
    http_version: str = "1.1"


class ClientSide(Protocol):
    """What an adapter offers the core for one stream towards the client."""

    def send_head(self, status: int, headers: Headers) -> None: ...
    def send_body(self, data: bytes) -> None: ...
    def send_end(self) -> None: ...
    def abort(self) -> None: ...
    def pause_request_body(self) -> None: ...
    def resume_request_body(self) -> None: ...


#: Where the native path puts each piece of body (a transport's `write`, or a stream's
#: `send_body`).
BodyWrite = Callable[[bytes], object]


@dataclass(frozen=True, slots=True)
class BodyWriter:
    """How a client side takes body pieces from the native path: `write` each, framed
    as an HTTP/1.1 chunk first (`chunked`) or as they are; and for a resumable stream,
    copy each into `journal` first (`write` is None while no client is attached)."""

    write: BodyWrite | None
    chunked: bool
    journal: Journal | None = None


@runtime_checkable
class DirectClient(Protocol):
    """A client side that can take body pieces from the native path."""

    def body_writer(self) -> BodyWriter | None:
        """How, for this response; None if only `send_body` will do."""
        ...


@runtime_checkable
class ExpressUpstream(Protocol):
    """An exchange that can hand the body to such a client itself (the body pump's
    native path, relay/upstream/_bodypump.pyx): scanning, counting and timing each
    piece as `StreamMachine.response_body` would, which is then told in batches."""

    def express(self, writer: BodyWriter, scanner: object, last_byte: float) -> bool: ...
    def redirect(self, writer: BodyWriter) -> None:
        """The pieces go to `writer` from now on (a resumable stream changed clients)."""
        ...

    def take_progress(self) -> tuple[int, float, float]: ...
    def rebase(self, last_byte: float) -> None: ...


class EdgeStream(Protocol):
    """A stream as an adapter drives it: a relayed exchange (relay/core/stream.py) or a
    request for a resumable one (relay/core/resume_request.py)."""

    @property
    def head(self) -> RequestHead: ...
    def start(self) -> None: ...
    def refuse(self, error: RelayError) -> None: ...
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...
    def on_client_gone(self) -> None: ...
    def on_client_paused(self) -> None: ...
    def on_client_resumed(self) -> None: ...


class ResponseSink(Protocol):
    """Where an upstream exchange delivers what it reads (the core's stream)."""

    def on_response_head(self, status: int, headers: Headers) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...
    def on_upstream_failed(self, error: RelayError) -> None: ...
    def on_upstream_paused(self) -> None: ...
    def on_upstream_resumed(self) -> None: ...


class UpstreamExchange(Protocol):
    """One request in flight to upstream, as the core drives it."""

    def send_body(self, data: bytes) -> None: ...
    def send_end(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


#: Sends a request head upstream (try number `attempt`, from 0) and returns the exchange.
OpenUpstream = Callable[[RequestHead, ResponseSink, int], Awaitable[UpstreamExchange]]


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Per-stream behaviour, fixed for the life of the process."""

    keepalive_interval: float
    keepalive_frame: bytes
    read_timeout: float
    #: A client that takes nothing for this long while bytes wait for it is dropped.
    send_timeout: float
    #: A request body that gets no byte for this long before the answer starts: 408.
    body_timeout: float
    max_body_bytes: int
    retry: RetryPolicy
    body_policy: BodyPolicy
    #: How long a resumable stream whose client left keeps reading upstream.
    resume_grace: float = 60.0
    #: Upstream is a remote sse-relay: ask it for resumable streams, resume on drops.
    resume_upstream: bool = False
    #: Every stream is resumable, asked or not (a route's `resumable = true`).
    resumable: bool = False
    #: The provider every stream of the route speaks (a route's `provider`); None: told
    #: by each request's path.
    provider: Provider | None = None
