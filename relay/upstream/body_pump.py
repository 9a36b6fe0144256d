"""The response body decoder the relay uses: the Cython pump when built, else the
pure-Python twin (relay/upstream/body_decoder.py), as for the SSE scanner.

`SSE_RELAY_NO_EXTENSIONS=1` forces the twin. `IMPLEMENTATION` says which one was
picked ("cython" or "python").
"""

from __future__ import annotations

import os

from relay.upstream.body_decoder import body_decoder

IMPLEMENTATION = "python"
if os.environ.get("SSE_RELAY_NO_EXTENSIONS") != "1":
    try:
        from relay.upstream._bodypump import body_decoder

        IMPLEMENTATION = "cython"
    except ImportError:
        pass

__all__ = ["IMPLEMENTATION", "body_decoder"]
