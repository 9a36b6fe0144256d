"""What a relay process does differently as one of `--workers N` (see relay.supervisor).

A worker is told its id by `SSE_RELAY_WORKER_ID`, names itself in every log line, and
drains when its supervisor goes away, however that happens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import sys
from collections.abc import Callable, Mapping

from relay.config import ConfigError

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


class _Tagged(logging.Formatter):
    """Wraps a handler's formatter so each line names its process.

    Whatever the format: a JSON object line gets a leading `"worker"` field, any other
    line a `worker=N ` prefix. The record also carries `worker`, for formatters that
    want it as a field of their own.
    """

    def __init__(self, inner: logging.Formatter, worker: int | str) -> None:
        super().__init__()
        self._inner = inner
        self._worker = worker
        self._text = f"worker={worker} "
        self._json = '{"worker": ' + json.dumps(worker) + ", "

    def format(self, record: logging.LogRecord) -> str:
        record.worker = self._worker
        line = self._inner.format(record)
        if line.startswith("{") and line.endswith("}") and len(line) > 2:
            return self._json + line[1:]
        return self._text + line


def tag_logs(worker: int | str) -> None:
    """Make every line the root logger's handlers write name `worker`."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_Tagged(handler.formatter or logging.Formatter(), worker))


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
