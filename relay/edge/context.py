"""What the client-side adapters (HTTP/1.1, HTTP/2, HTTP/3) share in one process."""

from __future__ import annotations

from relay.core.registry import StreamRegistry
from relay.ops.config import RelayConfig
from relay.ops.metrics import RelayMetrics


class EdgeContext:
    """The adapters' limits (from the config), the stream registry, metrics, Alt-Svc."""

    def __init__(self, config: RelayConfig, streams: StreamRegistry, metrics: RelayMetrics) -> None:
        self.config = config
        self.streams = streams
        self.metrics = metrics
        #: The Alt-Svc value HTTP/1.1 and HTTP/2 responses carry while HTTP/3 is served.
        self.alt_svc: bytes | None = None
