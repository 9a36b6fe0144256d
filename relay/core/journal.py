"""The journal the relay uses: the Cython arena when built, else the pure twin
(relay/core/journal_pure.py), as for the SSE scanner.

`SSE_RELAY_NO_EXTENSIONS=1` forces the twin. `IMPLEMENTATION` says which one was
picked ("cython" or "python").
"""

from __future__ import annotations

import os

from relay.core.journal_pure import Ending, Journal, JournalTotal

IMPLEMENTATION = "python"
if os.environ.get("SSE_RELAY_NO_EXTENSIONS") != "1":
    try:
        from relay.core._journal import Journal, JournalTotal  # type: ignore[assignment]

        IMPLEMENTATION = "cython"
    except ImportError:
        pass

__all__ = ["IMPLEMENTATION", "Ending", "Journal", "JournalTotal"]
