"""Runs `python -m relay` as a real process on an ephemeral port, for tests.

Every relay a test starts is also checked: when it stops, it must have exited as
expected and logged no traceback and no error the test did not declare (`log_problems`).
A crash inside the relay then fails the test even when the client side looked fine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar

_READY = re.compile(rb"listening on http://[^:]+:(\d+)")
_TLS_READY = re.compile(rb"https://[^:]+:(\d+)")
_H3_READY = re.compile(rb"h3://[^:]+:(\d+)")
_ADMIN_READY = re.compile(rb"admin=(http://[^\s]+)")
REPO = Path(__file__).resolve().parent.parent
#: Log levels that fail a test unless it declared the message (`expect_errors`).
_ERROR_LEVELS = frozenset({"error", "critical"})
# Enough of each offending line to see what happened, without flooding the report.
_QUOTE_CHARS = 4000
_QUOTE_LINES = 20


def log_problems(log: bytes, expect_errors: Sequence[str] = ()) -> list[str]:
    """The offending entries of a relay's stderr: a traceback (a JSON line's `exc`, or
    a plain-text "Traceback" with the lines after it), or an error or critical line
    whose message matches none of the `expect_errors` regexes."""
    allowed = [re.compile(pattern) for pattern in expect_errors]
    problems: list[str] = []
    lines = log.decode(errors="replace").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            if "Traceback" in line:
                # Python printed it itself (a crash past logging): keep the whole block.
                block = [line]
                while index < len(lines) and not lines[index].startswith("{"):
                    block.append(lines[index])
                    index += 1
                problems.append("\n".join(block))
            continue
        message = str(entry.get("message", ""))
        is_error = entry.get("level") in _ERROR_LEVELS
        # An error the test declared may carry its traceback; nothing else may.
        if is_error and any(pattern.search(message) for pattern in allowed):
            continue
        if is_error or "exc" in entry:
            problems.append(line if "exc" not in entry else f"{line}\n{entry['exc']}")
    return problems


def _report(problems: list[str]) -> str:
    shown = [problem[:_QUOTE_CHARS] for problem in problems[:_QUOTE_LINES]]
    more = len(problems) - len(shown)
    return "\n".join(shown) + (f"\n... and {more} more" if more > 0 else "")


class RelayProcess:
    """A relay subprocess; `url` is where clients connect.

    `expect_errors`: regexes for the messages of error lines this test provokes on
    purpose; any other error or critical line, or any traceback, fails it.
    `expect_exit`: the exit code once stopped (SIGTERM, unless the test ended it
    otherwise); None accepts any. Both are checked by `stop()` and on leaving a
    `with` block that raised nothing (a failure already on its way is not masked).
    """

    _running: ClassVar[weakref.WeakSet[RelayProcess]] = weakref.WeakSet()

    def __init__(
        self,
        upstream: str,
        *extra: str,
        keepalive: float = 0.1,
        env: dict[str, str] | None = None,
        command: Sequence[str] = (sys.executable, "-m", "relay"),
        admin: str | None = "127.0.0.1:0",
        expect_errors: Sequence[str] = (),
        expect_exit: int | None = 0,
    ) -> None:
        self.expect_errors = tuple(expect_errors)
        self.expect_exit = expect_exit
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
        #: How much of the log `check_log` has already looked at.
        self._log_checked = 0
        #: Why the relay's exit code is what it is, when we forced it.
        self._killed_after_timeout = False
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
        RelayProcess._running.add(self)

    @classmethod
    def running(cls) -> list[RelayProcess]:
        """The relays started and not yet stopped (module fixtures' ones among them)."""
        return list(cls._running)

    def _read_ready_line(self, timeout: float = 20.0) -> bytes:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                if line := self.proc.stdout.readline():
                    return line
                break  # stdout closed without a ready line: it is exiting
            if self.proc.poll() is not None:
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)  # so that its last words are in the log
        if self.proc.poll() is None:  # hung before listening: leave nothing behind
            self.proc.kill()
            self.proc.wait()
        log = self.stderr_text.decode(errors="replace")
        raise RuntimeError(f"relay did not start (exit {self.proc.poll()}): {log}")

    @property
    def stderr_text(self) -> bytes:
        """Everything the relay logged so far. Read with pread: the file's offset is
        shared with the relay, so a seek here would make it write over its own log."""
        fd = self._stderr.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0)

    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field}")

    def rss_kib(self) -> int:
        """Resident memory of the relay process now, from /proc."""
        return self._status_kib("VmRSS")

    def peak_rss_kib(self) -> int:
        """The most resident memory the relay process had (VmHWM) since it started or
        since `rss_baseline_kib`: unlike a sample of `rss_kib`, it cannot miss a short
        peak."""
        return self._status_kib("VmHWM")

    def rss_baseline_kib(self) -> int:
        """`rss_kib` now, with the peak reset to it: a later `peak_rss_kib` minus this is
        what the process grew since, not a peak it had before (clear_refs "5")."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        return self.rss_kib()

    def check_log(self) -> None:
        """Fails if the log, since the last check, has a traceback or an error line the
        test did not declare. Only whole lines count while the relay still runs."""
        log = self.stderr_text
        end = len(log) if self.proc.poll() is not None else log.rfind(b"\n") + 1
        start, self._log_checked = self._log_checked, max(self._log_checked, end)
        problems = log_problems(log[start:end], self.expect_errors)
        if problems:
            raise AssertionError(
                "the relay logged a traceback or an undeclared error "
                f"(declare expected ones with expect_errors):\n{_report(problems)}"
            )

    def _exit_problem(self) -> str | None:
        """Why the stopped relay's exit code is not `expect_exit`, if it is not."""
        code = self.proc.returncode
        if self.expect_exit is None or code == self.expect_exit:
            return None
        why = " (killed: no exit within 10 s of SIGTERM)" if self._killed_after_timeout else ""
        tail = self.stderr_text.decode(errors="replace")[-_QUOTE_CHARS:]
        return f"relay exited with {code}{why}, expected {self.expect_exit}; its log ends:\n{tail}"

    def _terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self._killed_after_timeout = True
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        RelayProcess._running.discard(self)
        return self.proc.returncode

    def stop(self) -> int:
        """SIGTERM (unless it already exited), wait; then check its exit and its log."""
        code = self._terminate()
        failures = [problem] if (problem := self._exit_problem()) else []
        try:
            self.check_log()
        except AssertionError as failure:
            failures.insert(0, str(failure))
        if failures:
            raise AssertionError("\n\n".join(failures))
        return code

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.stop()
        else:
            self._terminate()


def run_cli(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    expect_errors: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Runs the CLI to completion (for flag validation and --version). Its exit code is
    the caller's to check; its log may hold no traceback or undeclared error line."""
    done = subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=30,
    )
    problems = log_problems(done.stderr.encode(), expect_errors)
    assert not problems, f"the relay logged a traceback or undeclared error:\n{_report(problems)}"
    return done
