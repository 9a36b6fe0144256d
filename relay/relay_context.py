"""What every protocol adapter shares: settings, metrics, live streams, upstreams."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace

from relay.body_policy import BodyPolicy
from relay.config import RelayConfig, UpstreamTarget
from relay.errors import Overloaded, RelayError
from relay.exchange import (
    ClientSide,
    RequestHead,
    ResponseSink,
    StreamSettings,
    UpstreamExchange,
)
from relay.keepalive import FRAMES
from relay.metrics import RelayMetrics
from relay.request_rules import check_request
from relay.retry import RetryPolicy
from relay.routes import RouteTable
from relay.stream import RelayStream
from relay.upstream_pool import UpstreamPool, tls_context


@dataclass(frozen=True, slots=True)
class Route:
    """What a request gets by its path (`[[route]]` in the config file, else the top level)."""

    settings: StreamSettings
    #: Tried in order, one per attempt, round robin.
    pools: tuple[UpstreamPool, ...]


class RelayContext:
    """Opens relay streams for the adapters; one per process."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.metrics = RelayMetrics()
        self.active: set[RelayStream] = set()
        self.draining = False
        #: Called when a drain starts (HTTP/2 connections send GOAWAY).
        self.on_drain: set[Callable[[], None]] = set()
        #: The Alt-Svc value HTTP/1.1 and HTTP/2 responses carry while HTTP/3 is served.
        self.alt_svc: bytes | None = None
        self.settings = StreamSettings(
            keepalive_interval=config.keepalive_interval,
            keepalive_frame=FRAMES[config.keepalive_frame],
            read_timeout=config.read_timeout,
            send_timeout=config.send_timeout,
            body_timeout=config.body_timeout,
            max_body_bytes=config.max_body_bytes,
            retry=RetryPolicy(
                attempts=config.retry_attempts,
                budget=config.retry_budget,
                statuses=config.retry_statuses,
            ),
            body_policy=BodyPolicy(config.deny_params, config.on_deny),
        )
        protocol = config.upstream_protocol
        tls = tls_context(config.tls_verify, config.upstream_ca, protocol)
        # One pool per upstream URL, shared by every route that names it.
        by_url: dict[str, UpstreamPool] = {}

        def pools(targets: tuple[UpstreamTarget, ...]) -> tuple[UpstreamPool, ...]:
            for target in targets:
                if target.url not in by_url:
                    by_url[target.url] = UpstreamPool(
                        target, connect_timeout=config.connect_timeout, tls=tls, protocol=protocol
                    )
            return tuple(by_url[target.url] for target in targets)

        #: Longest path prefix first; one lookup when a stream opens, one per upstream try.
        self.routes = RouteTable(
            Route(self.settings, pools(config.upstreams)),
            [
                (
                    route.prefix.encode(),
                    Route(
                        replace(self.settings, keepalive_interval=route.keepalive_interval),
                        pools(route.upstreams),
                    ),
                )
                for route in config.routes
            ],
        )
        self.pools = list(by_url.values())

    def new_stream(self, client: ClientSide, head: RequestHead) -> RelayStream:
        """A stream for the adapter to keep; `start` it once the adapter holds it."""
        settings = self.routes.match(head.target).settings
        return RelayStream(client, head, settings, self.metrics, self.active)

    def start(self, stream: RelayStream) -> None:
        """Relay the stream, or refuse it at once (a request upstream must not get as it
        is, draining, over the stream limit)."""
        try:
            check_request(stream.head)
        except RelayError as error:
            stream.refuse(error)
            return
        if self.draining:
            stream.refuse(Overloaded("sse-relay is restarting; retry the request"))
        elif len(self.active) > self.config.max_streams:
            stream.refuse(
                Overloaded(f"sse-relay is at its limit of {self.config.max_streams} streams")
            )
        else:
            stream.start(self._open_upstream)

    async def _open_upstream(
        self, head: RequestHead, sink: ResponseSink, attempt: int
    ) -> UpstreamExchange:
        # Retries move on to the route's next upstream, round robin.
        pools = self.routes.match(head.target).pools
        return await pools[attempt % len(pools)].open(head, sink)

    async def drain(self, timeout: float) -> None:
        """Let live streams finish for up to `timeout` s, then end the rest cleanly."""
        self.draining = True
        for notify in list(self.on_drain):
            notify()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.active and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for stream in list(self.active):
            stream.end_for_drain()

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
