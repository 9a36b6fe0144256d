"""The edge's body writers in C, when the extensions are built: `ChunkOut` sends
HTTP/1.1 chunks on a client's socket (relay/edge/_h1data.pyx), `H2DataOut` writes
HTTP/2 DATA frames beside `h2`'s bookkeeping (relay/edge/_h2data.pyx).

Without them, or with `SSE_RELAY_NO_EXTENSIONS=1`, both are None, and the edges write
through `transport.write` and `h2`'s `send_data` alone: the same bytes on the wire.
"""

from __future__ import annotations

import asyncio
import os

from uvloop.loop import TCPTransport  # type: ignore[attr-defined]  # not in its stub

try:
    if os.environ.get("SSE_RELAY_NO_EXTENSIONS") == "1":
        raise ImportError("the extensions are switched off")
    from relay.edge._h1data import ChunkOut
    from relay.edge._h2data import H2DataOut
except ImportError:
    ChunkOut = None  # type: ignore[assignment,misc]
    H2DataOut = None  # type: ignore[assignment,misc]


def chunk_out(transport: asyncio.WriteTransport) -> ChunkOut | None:
    """A `ChunkOut` for an HTTP/1.1 response on `transport`, if it can take one: built,
    and a plain uvloop TCP transport (a TLS one's socket carries records, not chunks)."""
    if ChunkOut is None or type(transport) is not TCPTransport:
        return None
    return ChunkOut(transport)


__all__ = ["ChunkOut", "H2DataOut", "chunk_out"]
