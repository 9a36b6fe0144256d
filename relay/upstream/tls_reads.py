"""An HTTP/1.1 upstream's TLS reads decrypted in C (relay/upstream/_tlsread.pyx), when
the extensions are built and the installed CPython, OpenSSL and uvloop are the ones it
knows; otherwise uvloop's SSL transport reads, as before (`SSE_RELAY_NO_EXTENSIONS=1`
too). The bytes delivered are the same.
"""

from __future__ import annotations

import asyncio
import os

from uvloop.loop import TCPTransport  # type: ignore[attr-defined]  # not in its stub

try:
    if os.environ.get("SSE_RELAY_NO_EXTENSIONS") == "1":
        raise ImportError("the extensions are switched off")
    from relay.upstream._tlsread import TlsTransport, fits
except ImportError:
    TlsTransport = None  # type: ignore[assignment,misc]


def tls_transport(raw: asyncio.BaseTransport, tls: asyncio.Transport) -> asyncio.Transport:
    """`tls` (what `loop.start_tls` made over `raw`), with its reads taken over in C if
    they can be."""
    if TlsTransport is None or type(raw) is not TCPTransport or not fits(tls):
        return tls
    return TlsTransport(raw, tls)  # type: ignore[return-value]  # the subset it uses


__all__ = ["TlsTransport", "tls_transport"]
