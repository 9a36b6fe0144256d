"""`make demo`: a simulated 30 s thinking gap, the relay, and a client showing keepalives.

Starts `sse-relay sim` (silent for 30 s after the first thinking delta) and the relay
(keepalive every 5 s), then streams one turn and prints each frame as it arrives.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import httpx2

GAP = 30
KEEPALIVE = 5


def _start(args: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([sys.executable, "-m", "relay", *args], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    print(f"  started: {line.strip()}")
    match = re.search(r":(\d+)", line.split("http://", 1)[1])
    assert match, line
    return proc, int(match.group(1))


def main() -> int:
    print(f"Simulated upstream with a {GAP} s silent thinking gap, relay keepalive {KEEPALIVE} s")
    sim, sim_port = _start(["sim", "--listen", "127.0.0.1:0", "--gap", str(GAP)])
    relay, relay_port = _start(
        [
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            f"http://127.0.0.1:{sim_port}",
            "--keepalive-interval",
            str(KEEPALIVE),
            "--admin-listen",
            "off",  # a demo must not collide with a relay already on the admin port
        ]
    )
    body = {
        "model": "claude-sim-1",
        "max_tokens": 1024,
        "stream": True,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "Think hard."}],
    }
    start = time.monotonic()
    try:
        with (
            httpx2.Client(timeout=120) as client,
            client.stream(
                "POST", f"http://127.0.0.1:{relay_port}/v1/messages", json=body
            ) as response,
        ):
            buffer = b""
            for chunk in response.iter_raw():
                buffer += chunk
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    label = frame.split(b"\n", 1)[0].decode()
                    if label.startswith("data:"):
                        label = json.loads(label[5:])["type"]
                    print(f"  {time.monotonic() - start:6.2f} s  {label}")
    finally:
        relay.terminate()
        sim.terminate()
        relay.wait()
        sim.wait()
    print("Every silent stretch was bridged by ': keepalive' comments at frame boundaries.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
