"""What a relay process does differently as one of `--workers N` (see relay.ops.supervisor).

A worker is told its id by `SSE_RELAY_WORKER_ID` (its log lines carry it, see
relay.ops.access_log.JsonFormatter) and drains when its supervisor goes away, however
that happens.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import Callable, Mapping

from relay.ops.config import ConfigError

#: Set by the supervisor for each worker process it starts; 1..N.
WORKER_ENV = "SSE_RELAY_WORKER_ID"


def worker_id_from_env(environ: Mapping[str, str] = os.environ) -> int | None:
    """This process's worker id, or None when it runs on its own (or supervises)."""
    raw = environ.get(WORKER_ENV)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{WORKER_ENV}: expected a worker id from 1, got {raw!r}")
    return int(raw)


async def watch_supervisor(on_gone: Callable[[], None]) -> None:
    """Call `on_gone` when the supervisor is gone, even if it was SIGKILLed.

    The supervisor holds the other end of this worker's stdin pipe and never writes:
    end-of-file means every copy of that end is closed, which the kernel does when the
    supervisor dies. Without this a killed supervisor would leave its workers running.
    """
    if not stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
        return

    class _Eof(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            on_gone()

    await asyncio.get_running_loop().connect_read_pipe(_Eof, sys.stdin)
