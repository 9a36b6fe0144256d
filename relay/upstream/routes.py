"""Which settings and upstreams a request gets, by its path: resolved once per stream.

Built once per process from the config: one `StreamSettings` per route (the only owner
of every per-stream setting) and one `UpstreamPool` per upstream URL, shared by every
route that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from relay.core.body_policy import BodyPolicy
from relay.core.exchange import (
    RequestHead,
    ResponseSink,
    StreamSettings,
    UpstreamExchange,
    UpstreamTarget,
)
from relay.core.keepalive import FRAMES
from relay.core.providers import parse_provider
from relay.core.retry import RetryPolicy
from relay.core.route_table import RouteTable
from relay.ops.config import RelayConfig
from relay.upstream.pool import UpstreamPool, tls_context


def stream_settings(config: RelayConfig) -> StreamSettings:
    """The top-level settings every stream gets unless a route says otherwise."""
    return StreamSettings(
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
        resume_grace=config.resume_grace,
        resume_upstream=config.resume_upstream,
    )


@dataclass(frozen=True, slots=True)
class Route:
    """What a request gets by its path (`[[route]]` in the config file, else the top level)."""

    settings: StreamSettings
    #: Tried in order, one per attempt, round robin.
    pools: tuple[UpstreamPool, ...]

    async def open_upstream(
        self, head: RequestHead, sink: ResponseSink, attempt: int
    ) -> UpstreamExchange:
        """Send `head` upstream; retries move on to the route's next upstream."""
        return await self.pools[attempt % len(self.pools)].open(head, sink)


class UpstreamRoutes:
    """The routes of one relay process and the upstream pools behind them."""

    def __init__(self, config: RelayConfig) -> None:
        protocol = config.upstream_protocol
        tls = tls_context(config.tls_verify, config.upstream_ca, protocol)
        by_url: dict[str, UpstreamPool] = {}

        def pools(targets: tuple[UpstreamTarget, ...]) -> tuple[UpstreamPool, ...]:
            for target in targets:
                if target.url not in by_url:
                    by_url[target.url] = UpstreamPool(
                        target,
                        connect_timeout=config.connect_timeout,
                        tls=tls,
                        protocol=protocol,
                        resumable=config.resume_upstream,
                    )
            return tuple(by_url[target.url] for target in targets)

        settings = stream_settings(config)
        #: Longest path prefix first; one lookup per stream.
        self._table = RouteTable(
            Route(settings, pools(config.upstreams)),
            [
                (
                    route.prefix.encode(),
                    Route(
                        replace(
                            settings,
                            keepalive_interval=route.keepalive_interval,
                            resumable=route.resumable,
                            provider=None
                            if route.provider is None
                            else parse_provider(route.provider),
                        ),
                        pools(route.upstreams),
                    ),
                )
                for route in config.routes
            ],
        )
        self._pools = list(by_url.values())

    def match(self, target: bytes) -> Route:
        return self._table.match(target)

    def close(self) -> None:
        for pool in self._pools:
            pool.close()
