"""Runs `python -m relay` as a real process on an ephemeral port, for tests."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

_READY = re.compile(rb"listening on http://[^:]+:(\d+)")
_TLS_READY = re.compile(rb"https://[^:]+:(\d+)")
_H3_READY = re.compile(rb"h3://[^:]+:(\d+)")
_ADMIN_READY = re.compile(rb"admin=(http://[^\s]+)")
REPO = Path(__file__).resolve().parent.parent


class RelayProcess:
    """A relay subprocess; `url` is where clients connect."""

    def __init__(
        self,
        upstream: str,
        *extra: str,
        keepalive: float = 0.1,
        env: dict[str, str] | None = None,
        command: Sequence[str] = (sys.executable, "-m", "relay"),
        admin: str | None = "127.0.0.1:0",
    ) -> None:
        # An ephemeral admin port by default, so that relays in parallel never collide
        # on the default one; None leaves --admin-listen to `extra` or the environment.
        admin_args = ["--admin-listen", admin] if admin is not None else []
        args = [
            *command,
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--keepalive-interval",
            str(keepalive),
            *admin_args,
            *extra,
        ]
        # A file, not a pipe: a chatty relay must never block on a full pipe buffer.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the process)
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        self.ready_line = self._read_ready_line()
        match = _READY.search(self.ready_line)
        assert match, self.ready_line
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        tls = _TLS_READY.search(self.ready_line)
        #: The TLS listener (HTTP/2 or HTTP/1.1 by ALPN), when one was asked for.
        self.tls_url = f"https://localhost:{tls.group(1).decode()}" if tls else ""
        h3 = _H3_READY.search(self.ready_line)
        #: The HTTP/3 (QUIC, UDP) port, when --http3 was given; else 0.
        self.h3_port = int(h3.group(1)) if h3 else 0
        admin_match = _ADMIN_READY.search(self.ready_line)
        #: The admin listener (/metrics, /healthz, /readyz), when there is one; else "".
        self.admin_url = admin_match.group(1).decode() if admin_match else ""

    def _read_ready_line(self, timeout: float = 20.0) -> bytes:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                return self.proc.stdout.readline()
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"relay did not start: {self.stderr_text.decode(errors='replace')}")

    @property
    def stderr_text(self) -> bytes:
        """Everything the relay logged so far."""
        self._stderr.seek(0)
        return self._stderr.read()

    def rss_kib(self) -> int:
        """Resident memory of the relay process, from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_cli(
    args: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs the CLI to completion (for flag validation and --version)."""
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=30,
    )
