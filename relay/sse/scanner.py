"""The SSE frame scanner the relay uses: the Cython one when built, else the pure twin.

`SSE_RELAY_NO_EXTENSIONS=1` forces the pure-Python twin. `IMPLEMENTATION` says which
one was picked ("cython" or "python").
"""

from __future__ import annotations

import os

IMPLEMENTATION: str
if os.environ.get("SSE_RELAY_NO_EXTENSIONS") == "1":
    from relay.sse.scanner_pure import FrameScanner

    IMPLEMENTATION = "python"
else:
    try:
        from relay.sse._fastsse import FrameScanner  # type: ignore[assignment]

        IMPLEMENTATION = "cython"
    except ImportError:
        from relay.sse.scanner_pure import FrameScanner

        IMPLEMENTATION = "python"

__all__ = ["IMPLEMENTATION", "FrameScanner"]
