"""The stream machine's asyncio shell: the only part of the core that knows about the
event loop, tasks, timers, the client adapter and the upstream exchange.

Adapters (HTTP/1.1, HTTP/2, HTTP/3) call `on_request_*` / `on_client_*`; an upstream
exchange calls `on_response_*`. Each call feeds `StreamMachine` (relay/core/stream_machine.py)
with the loop's time and carries out the actions it returns, in order. The per-chunk
path is one machine call and one write.

Once the first bytes are settled, an HTTP/1.1 upstream whose body the Cython pump
decodes takes the per-chunk path over itself (`ExpressUpstream`), writing to the client
as it says (`DirectClient`): the machine is then told what it did before each of its
other events (`_catch_up`), and no Python of the core runs per chunk.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from relay.core.errors import RelayError, UpstreamLost
from relay.core.exchange import (
    ClientSide,
    DirectClient,
    ExpressUpstream,
    Headers,
    OpenUpstream,
    RequestHead,
    StreamSettings,
    UpstreamExchange,
)
from relay.core.resumable import ResumableClient
from relay.core.stream_actions import (
    AbortUpstream,
    Action,
    ArmTimer,
    EndResponse,
    Finish,
    PauseUpstream,
    ResetClient,
    ResumeUpstream,
    SendBody,
    SendHead,
    SendKeepalive,
    UpstreamBody,
    UpstreamEnd,
)
from relay.core.stream_actions import (
    OpenUpstream as OpenAction,
)
from relay.core.stream_machine import StreamMachine
from relay.core.stream_record import Outcome
from relay.core.stream_state import Upstream
from relay.ops.access_log import log_stream
from relay.ops.metrics import RelayMetrics

log = logging.getLogger("sse_relay")


class RelayStream:
    """Relays one exchange by running its `StreamMachine` against real IO."""

    __slots__ = (
        "_active",
        "_client",
        "_connecting",
        "_express",
        "_express_decided",
        "_loop",
        "_machine",
        "_metrics",
        "_on_finish",
        "_open_upstream",
        "_resumable",
        "_retry",
        "_timer",
        "_upstream",
    )

    def __init__(
        self,
        client: ClientSide,
        head: RequestHead,
        settings: StreamSettings,
        open_upstream: OpenUpstream,
        metrics: RelayMetrics,
        active: set[RelayStream],
        on_finish: Callable[[Outcome], None] | None = None,
    ) -> None:
        self._client = client
        # The same object as `_client` when the stream is resumable, typed as such.
        self._resumable = client if isinstance(client, ResumableClient) else None
        self._on_finish = on_finish
        self._metrics = metrics
        self._active = active
        self._loop = asyncio.get_running_loop()
        self._machine = StreamMachine(head, settings, self._loop.time())
        self._open_upstream = open_upstream
        self._upstream: UpstreamExchange | None = None
        # The try being opened: cancelled when the machine aborts it, so that a stream
        # the client reset at once (HTTP/2 rapid reset) never reaches upstream.
        self._connecting: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None  # a try waiting out its backoff
        self._timer: asyncio.TimerHandle | None = None
        # The try whose body does its own per-chunk work, and whether this try's
        # chance to is settled (it is looked at until the first bytes are).
        self._express: ExpressUpstream | None = None
        self._express_decided = False
        metrics.stream_started(head.http_version)
        active.add(self)

    @property
    def head(self) -> RequestHead:
        return self._machine.head

    def start(self) -> None:
        """Relay a request that passed `relay.core.request_rules.check_request`."""
        self._run(self._machine.start(self._loop.time()))

    def refuse(self, error: RelayError) -> None:
        """Answer the client without asking upstream (limits, policy, overload)."""
        self._run(self._machine.refuse(error, self._loop.time()))

    def end_for_drain(self) -> None:
        """The relay is shutting down: end this stream so the client retries elsewhere."""
        self._catch_up()
        self._run(self._machine.drain(self._loop.time()))

    # -- from the client adapter ------------------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        self._catch_up()  # a body may still come in while the response goes out
        self._run(self._machine.request_body(data, self._loop.time()))

    def on_request_end(self) -> None:
        self._catch_up()
        self._run(self._machine.request_end(self._loop.time()))

    def on_client_gone(self) -> None:
        """The client closed or reset: stop upstream at once so no tokens are wasted, or
        for a resumable stream, go on into its journal for the grace period."""
        self._catch_up()
        resumable = self._resumable
        if resumable is not None and resumable.resumable:
            resumable.detach(self._loop.time())
            self._redirect()
            self._run(self._machine.client_detached(self._loop.time()))
            self._rebase()  # a pause the client left in has ended
        else:
            self._run(self._machine.client_gone(self._loop.time()))

    def attach(self, client: ClientSide, offset: int) -> int | None:
        """A resume: `client` takes the stream over from body byte `offset`; the bytes
        replayed, or None if that offset cannot be served."""
        assert self._resumable is not None
        self._catch_up()
        replayed = self._resumable.attach(client, offset, self._loop.time())
        if replayed is not None:
            self._redirect()
            if not self._machine.finished:
                self._run(self._machine.client_attached(self._loop.time()))
        return replayed

    def is_attached(self, client: ClientSide) -> bool:
        return self._resumable is not None and self._resumable.client is client

    def cancel(self) -> None:
        """The client asked to stop paying: upstream is aborted now."""
        self._catch_up()
        self._run(self._machine.cancel(self._loop.time()))

    def on_client_paused(self) -> None:
        self._catch_up()
        self._run(self._machine.client_paused(self._loop.time()))

    def on_client_resumed(self) -> None:
        self._catch_up()
        self._run(self._machine.client_resumed(self._loop.time()))
        self._rebase()

    # -- from upstream ----------------------------------------------------------------

    def on_upstream_paused(self) -> None:
        self._client.pause_request_body()

    def on_upstream_resumed(self) -> None:
        self._client.resume_request_body()

    def on_response_head(self, status: int, headers: Headers) -> None:
        self._run(self._machine.response_head(status, headers, self._loop.time()))

    def on_response_body(self, data: bytes) -> None:
        # The hot path: one clock read, one machine call, one write.
        self._client.send_body(self._machine.response_body(data, self._loop.time()))
        if not self._express_decided:
            self._try_express()

    def on_response_end(self) -> None:
        self._catch_up()
        self._upstream = None
        self._express = None
        self._run(self._machine.response_end(self._loop.time()))

    def on_upstream_failed(self, error: RelayError) -> None:
        self._catch_up()
        self._run(self._machine.upstream_failed(error, self._loop.time()))

    # -- the express path -------------------------------------------------------------

    def _try_express(self) -> None:
        """Once the first bytes are settled, hand the per-chunk work to the upstream
        exchange if it can do it for this client; either way, settled for this try."""
        if self._machine.settling:
            return
        self._express_decided = True
        scanner = self._machine.express_scanner()
        if scanner is None:
            return
        client, upstream = self._client, self._upstream
        if not isinstance(client, DirectClient) or not isinstance(upstream, ExpressUpstream):
            return
        writer = client.body_writer()
        if writer is not None and upstream.express(writer, scanner, self._machine.last_byte):
            self._express = upstream
            self._metrics.native_path()

    def _redirect(self) -> None:
        """A resumable stream's client changed (it left, or a resume took the stream
        over): the express path writes where the stream's client side now says."""
        if self._express is not None and self._resumable is not None:
            self._express.redirect(self._resumable.body_writer())

    def _rebase(self) -> None:
        """The machine moved its last-byte time (a pause ended): the express path's
        silences count from there too."""
        if self._express is not None:
            self._express.rebase(self._machine.last_byte)

    def _catch_up(self) -> None:
        """Tell the machine what the express path did, before it decides anything."""
        if self._express is not None:
            self._machine.express_progress(*self._express.take_progress())

    # -- carrying out actions ---------------------------------------------------------

    def _run(self, actions: list[Action]) -> None:
        client = self._client
        for action in actions:
            match action:
                case SendHead(status, headers):
                    client.send_head(status, headers)
                case SendBody(data):
                    client.send_body(data)
                case SendKeepalive(data):
                    client.send_body(data)
                    self._metrics.keepalive()
                case EndResponse():
                    client.send_end()
                case ResetClient():
                    client.abort()
                case UpstreamBody(data):
                    if self._upstream is not None:
                        self._upstream.send_body(data)
                case UpstreamEnd():
                    if self._upstream is not None:
                        self._upstream.send_end()
                case PauseUpstream():
                    if self._upstream is not None:
                        self._upstream.pause_reading()
                case ResumeUpstream():
                    if self._upstream is not None:
                        self._upstream.resume_reading()
                case ArmTimer(at):
                    self._set_timer(at)
                case OpenAction(attempt, at, head):
                    self._open_try(attempt, at, head or self._machine.head)
                case AbortUpstream():
                    self._abort_upstream()
                case Finish(record, refused):
                    self._set_timer(math.inf)
                    if self._resumable is not None:
                        record = self._resumable.in_record(record, self._loop.time())
                    self._active.discard(self)
                    self._metrics.stream_finished(record)
                    if refused is not None:
                        self._metrics.refused(refused)
                    log_stream(record)
                    if self._on_finish is not None:
                        self._on_finish(record.outcome)

    def _set_timer(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if at != math.inf:
            self._timer = self._loop.call_at(at, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._catch_up()
        self._run(self._machine.tick(self._loop.time()))

    def _open_try(self, attempt: int, at: float, head: RequestHead) -> None:
        if at > self._loop.time():
            self._retry = self._loop.call_at(at, self._open_now, attempt, head)
        else:
            self._open_now(attempt, head)

    def _open_now(self, attempt: int, head: RequestHead) -> None:
        self._retry = None
        self._connecting = self._loop.create_task(self._connect(attempt, head))

    async def _connect(self, attempt: int, head: RequestHead) -> None:
        machine = self._machine
        try:
            try:
                upstream = await self._open_upstream(head, self, attempt)
            finally:
                self._connecting = None
            if machine.upstream is not Upstream.OPENING:
                upstream.abort()  # abandoned as it opened: the machine has moved on
                return
            self._upstream = upstream
            self._run(machine.upstream_opened(self._loop.time()))
        except RelayError as error:
            self._run(machine.upstream_failed(error, self._loop.time()))
        except Exception as exc:
            # A bug must not leave the client hanging: answer, and say what broke.
            log.exception("relaying %s %s failed", *machine.describe())
            failure = UpstreamLost("sse-relay internal error", repr(exc))
            self._run(machine.upstream_failed(failure, self._loop.time()))

    def _abort_upstream(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        upstream, self._upstream = self._upstream, None
        self._express = None
        self._express_decided = False  # a next try settles it again
        if upstream is not None:
            upstream.abort()
        # A congested upstream may have paused the client's body; a retry needs it.
        self._client.resume_request_body()
