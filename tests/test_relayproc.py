"""The relay harness's own checks: a relay that crashed, logged a traceback or logged an
error the test did not declare fails the test that started it."""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.relayproc import RelayProcess, log_problems
from tests.simserver import SimServer


def _line(level: str, message: str, **fields: str) -> str:
    """One line as relay.ops.access_log.JsonFormatter writes it."""
    entry = {"time": "2026-01-01T00:00:00.000Z", "level": level, "logger": "sse_relay"}
    return json.dumps(entry | {"message": message, **fields})


CRASH = [
    "Traceback (most recent call last):",
    '  File "/work/main/relay/cli.py", line 58, in main',
    "FileNotFoundError: [Errno 2] No such file or directory",
]


def test_tracebacks_and_error_lines_are_problems_other_lines_are_not() -> None:
    log = [
        _line("info", "sse-relay listening"),
        _line("warning", "refused POST /v1/messages: 413 body too large"),
        _line("error", "upstream pool broke"),
        _line("critical", "out of file descriptors"),
        _line("info", "Task exception was never retrieved", exc="Traceback ...\nValueError: x"),
        *CRASH,  # printed by Python itself, past logging
        _line("info", "sse-relay stopped"),
        "usage: sse-relay [-h] [--listen HOST:PORT]",  # argparse's plain text
    ]
    problems = log_problems("\n".join(log).encode())
    assert len(problems) == 4, problems
    assert "upstream pool broke" in problems[0] and "out of file descriptors" in problems[1]
    assert problems[2].endswith("ValueError: x")  # the exc field, quoted readably
    assert problems[3].splitlines() == CRASH  # the whole block, not its first line


def test_declared_errors_pass_and_excuse_nothing_else() -> None:
    log = [
        _line("error", "worker 1 (pid 7) did not get ready"),
        _line("error", "relaying POST /v1/messages failed", exc="Traceback ...\nKeyError: 1"),
        _line("error", "worker 2 (pid 8) did not stop; killing it"),
        # Matches, but only error lines are excused: a warning's traceback is a bug.
        _line("warning", "worker 3 (pid 9) did not get ready", exc="Traceback ...\nOSError"),
        *CRASH,
    ]
    expected = [r"did not get ready$", r"^relaying POST \S+ failed$"]
    problems = log_problems("\n".join(log).encode(), expected)
    # An error line matching a pattern may carry its traceback; an error line that
    # matches none, a warning's traceback and a crash still count.
    assert len(problems) == 3, problems
    assert "did not stop; killing it" in problems[0]
    assert problems[1].endswith("OSError") and problems[2].splitlines() == CRASH


def test_a_relay_that_died_fails_the_block_unless_its_end_was_expected(sim: SimServer) -> None:
    with (
        pytest.raises(AssertionError, match="relay exited with -9, expected 0"),
        RelayProcess(sim.url) as relay,
    ):
        relay.proc.kill()  # as a crash would end it
        relay.proc.wait()
    with RelayProcess(sim.url, expect_exit=None) as relay:
        relay.proc.kill()
        relay.proc.wait()


def test_the_checks_never_mask_a_failure_already_raised_in_the_block(sim: SimServer) -> None:
    with pytest.raises(ValueError, match="the test's own"), RelayProcess(sim.url) as relay:
        relay.proc.kill()
        relay.proc.wait()
        raise ValueError("the test's own failure")
    assert relay.proc.returncode == -9


# A stand-in relay: the ready line, then 3000 log lines as fast as it can, then waits.
_CHATTY = """
import sys, time
print("sse-relay listening on http://127.0.0.1:1", flush=True)
for i in range(3000):
    sys.stderr.write('{"level": "info", "message": "line %05d"}\\n' % i)
    sys.stderr.flush()
time.sleep(30)
"""


def test_reading_the_log_while_the_relay_writes_loses_no_line() -> None:
    """The log file's offset is shared with the relay: reading it must never move it,
    or the relay's next lines land over the start of its own log."""
    relay = RelayProcess(
        "http://127.0.0.1:9", command=[sys.executable, "-c", _CHATTY], expect_exit=None
    )
    with relay:
        deadline = time.monotonic() + 10
        while relay.stderr_text.count(b"\n") < 3000 and time.monotonic() < deadline:
            pass  # poll as a test waiting for a log line does, without a pause
        lines = relay.stderr_text.splitlines()
    assert [json.loads(line)["message"] for line in lines] == [f"line {i:05d}" for i in range(3000)]
