"""The relay process: listeners on a uvloop loop, a ready line, clean exit on signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from relay import __version__
from relay.config import RelayConfig
from relay.http1_server import Http1Server
from relay.relay_context import RelayContext
from relay.sse_scanner import IMPLEMENTATION

log = logging.getLogger("sse_relay")

# After the drain, time for the last error frames to leave the socket buffers.
_FLUSH_SECONDS = 0.2


async def serve(config: RelayConfig) -> None:
    """Accept clients until SIGTERM or SIGINT."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    loop = asyncio.get_running_loop()
    context = RelayContext(config)
    server = await loop.create_server(
        lambda: Http1Server(context),
        config.listen_host,
        config.listen_port,
        reuse_address=True,
        backlog=4096,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, port = server.sockets[0].getsockname()[:2]
    print(
        f"sse-relay {__version__} listening on http://{host}:{port} "
        f"upstream={config.upstreams[0].url} scanner={IMPLEMENTATION}",
        flush=True,
    )
    try:
        await stop.wait()
        # Graceful drain: stop accepting, let streams finish, end the rest cleanly.
        server.close()
        live = len(context.active)
        log.info("draining %d streams for up to %g s", live, config.drain_timeout)
        await context.drain(config.drain_timeout)
        await asyncio.sleep(_FLUSH_SECONDS)
    finally:
        server.close()
        context.close()
        log.info("sse-relay stopped")
