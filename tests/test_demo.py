"""`make demo` (scripts/demo.py): both outcomes shown, the relay's log kept aside, and
the whole demo quick enough to run while someone watches."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMOS = ("demo.py", "demo_resume.py")

RunDemo = Callable[[str], subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def run_demo() -> Iterator[RunDemo]:
    """Runs scripts/`script` as `make` does, and checks it passed within a minute. Both
    demos start at once (each spends its time waiting on its own sockets and sleeps)."""
    began = time.monotonic()
    running = {
        script: subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / script)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in DEMOS
    }

    def finished(script: str) -> subprocess.CompletedProcess[str]:
        process = running[script]
        stdout, stderr = process.communicate(timeout=120)
        took = time.monotonic() - began
        done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        assert done.returncode == 0, done.stdout + done.stderr
        assert took < 60, f"the demo took {took:.0f} s"
        return done

    yield finished
    for process in running.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_demo_shows_the_kill_and_the_rescue(run_demo: RunDemo) -> None:
    done = run_demo("demo.py")  # it should take about 12 s
    out = done.stdout
    bare, fronted = out.split("\n2. ", 1)

    # Without the relay: killed mid-response, seen as the SDK's own exception.
    assert "1. client -> idle-killing proxy (4 s) -> upstream, no relay" in bare
    assert "content_block_delta (thinking_delta)" in bare
    assert re.search(r"\d+\.\d\d s  the SDK raised httpx2\.\w+Error: ", bare), bare
    assert "message_stop" not in bare and ": keepalive" not in bare

    # With it: keepalives cross the 6 s silence, each at its arrival time, and the turn
    # completes.
    arrivals = [float(t) for t in re.findall(r"(\d+\.\d\d) s  : keepalive", fronted)]
    assert len(arrivals) >= 3, fronted
    assert arrivals == sorted(arrivals) and arrivals[-1] - arrivals[0] >= 2
    assert "message_stop" in fronted and "the turn completed" in fronted
    assert "SDK raised" not in fronted
    assert "Without the relay: killed mid-response" in out
    assert "= a 60 s AWS ALB idle timeout" in out and "= a 90 s extended-thinking pause" in out

    # The relay's JSON log is in the file the demo names, not in its output.
    assert '"level"' not in out and done.stderr == ""
    match = re.search(r"The relay's JSON log: (\S+)", out)
    assert match, out
    lines = [json.loads(line) for line in Path(match.group(1)).read_text().splitlines()]
    access = [line for line in lines if line["logger"] == "sse_relay.access"]
    assert len(access) == 1 and access[0]["outcome"] == "completed"
    assert access[0]["keepalives"] == len(arrivals)
    shutil.rmtree(Path(match.group(1)).parent)  # kept for a person, not for a test run


def test_demo_resume_shows_the_cut_and_the_resume(run_demo: RunDemo) -> None:
    """`make demo-resume`: its story in order, every claim checked by the script itself
    (it exits 1 otherwise), and no process left behind."""
    done = run_demo("demo_resume.py")  # it should take about 8 s
    out = done.stdout
    assert done.stderr == ""
    story = [
        "1. Fault-free: the SDK straight to upstream",
        "2. The SDK -> local relay -> cutting proxy -> remote relay -> upstream",
        "content_block_delta (thinking_delta)",
        "-- the proxy cut the connection after",
        "local relay:  resuming POST /v1/messages from byte",
        "remote relay: resumed stream",
        "message_stop",
        "[ok] the proxy cut the stream once, mid-thinking",
        "[ok] the local relay resumed it from the byte it had",
        "[ok] its final message is identical to the fault-free run's",
        "[ok] upstream saw 1 request for it",
    ]
    at = [out.find(line) for line in story]
    assert -1 not in at and at == sorted(at), out
    assert "FAILED" not in out
    # Both relays resumed at the same byte, and the remote replayed the cut keepalive's rest.
    asked = re.search(r"from byte (\d+)", out)
    served = re.search(r"at byte (\d+) \((\d+) replayed\)", out)
    assert asked and served and asked.group(1) == served.group(1), out
    assert served.group(2) == str(len(b"alive\n\n"))
    match = re.search(r"The relays' JSON logs: (\S+)", out)
    assert match, out
    logs = Path(match.group(1))
    for log in ("remote.log", "local.log"):  # both relays stopped: their last line says so
        assert "sse-relay stopped" in (logs / log).read_text().splitlines()[-1]
    shutil.rmtree(logs)
