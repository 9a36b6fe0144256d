"""Starting, pinning and stopping the benchmark's processes."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Two cores: the contender alone on one, the emitter and load generator on the other,
# so the contender's CPU and latency are its own, not shared with the harness.
CONTENDER_CPUS = frozenset({0})
HARNESS_CPUS = frozenset({1})


def pinning_enabled() -> bool:
    return len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0)


def pinned(cpus: frozenset[int]) -> Callable[[], None] | None:
    """A `preexec_fn` that pins the child (and what it forks) to `cpus`."""
    if not pinning_enabled():
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class ServerProcess:
    """A long-running child: started pinned, ready when its stdout line matches."""

    def __init__(
        self,
        args: Sequence[str],
        log: Path,
        *,
        cpus: frozenset[int],
        ready: re.Pattern[bytes] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log = log
        self.args = list(args)
        with log.open("wb") as stderr:
            self.proc = subprocess.Popen(
                self.args,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=REPO,
                env={**os.environ, **(env or {})},
                preexec_fn=pinned(cpus),
            )
        self.ready_line = self._wait_ready(ready) if ready is not None else b""

    def _wait_ready(self, ready: re.Pattern[bytes], timeout: float = 20.0) -> bytes:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if readable:
                line = self.proc.stdout.readline()
                if ready.search(line):
                    return line
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"{self.args[:3]} did not start: {self.log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def run_json_line(args: Sequence[str], *, cpus: frozenset[int], timeout: float) -> str:
    """Runs a child to completion (pinned) and returns its last stdout line."""
    done = subprocess.run(
        list(args),
        capture_output=True,
        cwd=REPO,
        timeout=timeout,
        preexec_fn=pinned(cpus),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args[:3]} failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout.decode().strip().splitlines()[-1]
