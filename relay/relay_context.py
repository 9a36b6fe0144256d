"""What every protocol adapter shares: settings, counters and the way to upstream."""

from __future__ import annotations

from relay.config import RelayConfig
from relay.counters import Counters
from relay.keepalive import FRAMES
from relay.stream import ClientSide, RelayStream, RequestHead, StreamSettings
from relay.upstream_pool import UpstreamPool, tls_context

MAX_HEADER_BYTES = 64 * 1024


class RelayContext:
    """Opens relay streams for the adapters; one per process."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.max_header_bytes = MAX_HEADER_BYTES
        self.settings = StreamSettings(
            keepalive_interval=config.keepalive_interval,
            keepalive_frame=FRAMES[config.keepalive_frame],
            read_timeout=config.read_timeout,
        )
        tls = tls_context(config.tls_verify, config.upstream_ca)
        self.pool = UpstreamPool(
            config.upstreams[0], connect_timeout=config.connect_timeout, tls=tls
        )

    def open_stream(self, client: ClientSide, head: RequestHead) -> RelayStream:
        stream = RelayStream(client, head, self.settings, self.counters)
        stream.start(self.pool.open)
        return stream

    def close(self) -> None:
        self.pool.close()
