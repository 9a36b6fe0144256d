"""`make demo-resume`: a network cut between two relays that the application never sees.

The official `anthropic` Python SDK streams a thinking turn through a local relay
(`--resume-upstream`, where ANTHROPIC_BASE_URL would point), which reaches a remote
relay through a proxy that resets the connection once the turn's thinking pause has
begun. The local relay resumes the stream from the byte it had
(`GET /relay/v1/streams/ID?offset=N`); the SDK reads one continuous stream, its final
message is the fault-free run's, and upstream (`relay_sim`, in this process so that its
requests can be counted) saw one request. Exits 1 if any of that does not hold.
"""

from __future__ import annotations

import asyncio
import json
import re
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic

from relay_sim.script import SimScript
from relay_sim.sim import start as start_sim
from relay_sim.state import SimState

GAP = 3.0  # seconds the sim thinks in silence, after its first thinking delta
REMOTE_KEEPALIVE = 0.5  # the remote relay's keepalives carry the silence; the cut follows one
PARAMS: dict[str, Any] = {
    "model": "claude-sim-1",
    "max_tokens": 2048,
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "messages": [{"role": "user", "content": "Think hard, then answer."}],
}
RAW_EVENTS = {
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
}
KEEPALIVE = b": keepalive\n\n"
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, as a cut looks


class Sim:
    """`relay_sim` on 127.0.0.1 on its own thread and loop; `state.requests` counts."""

    def __init__(self) -> None:
        self.state = SimState(script=SimScript(gaps=((2, GAP),)))
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(start_sim(self.state, "127.0.0.1", 0))
        self.port: int = self._server.sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            self.state.abort_all()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class CuttingProxy:
    """Forwards 127.0.0.1:`port` to `target_port` on one thread. Its first connection
    is reset (both sides) in the middle of the first `: keepalive` from the target, that
    is, once the thinking pause has begun."""

    def __init__(self, target_port: int, on_cut: Callable[[int], None]) -> None:
        self._target = ("127.0.0.1", target_port)
        self._on_cut = on_cut
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.cuts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        watched: socket.socket | None = None  # the first connection's target side
        passed = b""  # what it has passed on so far
        while not self._stop.is_set():
            for key, _ in selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    client, _ = sock.accept()
                    target = socket.create_connection(self._target)
                    watched = target if watched is None else watched
                    peers[client], peers[target] = target, client
                    selector.register(client, selectors.EVENT_READ)
                    selector.register(target, selectors.EVENT_READ)
                    continue
                if sock not in peers:
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                end = (passed + data).find(KEEPALIVE) if sock is watched and not self.cuts else -1
                if end >= 0:
                    end += len(b": keep")  # mid-comment: the resume must replay the rest
                    peers[sock].sendall(data[: end - len(passed)])
                    self.cuts += 1
                    self._close(selector, peers, sock, reset=True)
                    self._on_cut(end)
                elif data:
                    passed += data if sock is watched else b""
                    peers[sock].sendall(data)
                else:
                    self._close(selector, peers, sock, reset=False)
        for sock in list(peers):
            self._close(selector, peers, sock, reset=False)
        selector.close()

    @staticmethod
    def _close(
        selector: selectors.BaseSelector,
        peers: dict[socket.socket, socket.socket],
        sock: socket.socket,
        reset: bool,
    ) -> None:
        """Closes `sock` and its peer; with `reset`, with an RST, as a network cut."""
        other = peers.pop(sock, None)
        for each in (sock, other):
            if each is None:
                continue
            peers.pop(each, None)
            selector.unregister(each)
            if reset:
                each.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            each.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def _start_relay(args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Runs `python -m relay ARGS` (its log to `log`); returns it and its port."""
    # No admin listener: a demo must not collide with a relay already on that port.
    command = [sys.executable, "-m", "relay", "--listen=127.0.0.1:0", "--admin-listen=off"]
    with log.open("wb") as stderr:
        proc = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=stderr)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "http://" not in line:
        proc.kill()
        proc.wait()
        raise SystemExit(f"demo: a relay did not start (see {log})")
    return proc, int(line.split("http://", 1)[1].split()[0].rsplit(":", 1)[1])


def _turn(port: int, show: Callable[[str], None] | None) -> tuple[dict[str, Any], int]:
    """One streamed turn with the SDK through 127.0.0.1:`port`: its final message and
    how many raw events it saw, each shown as it arrives when `show` is given."""
    # A timeout: a demo that hangs shows nothing.
    client = anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{port}", api_key="sk-demo", max_retries=0, timeout=20
    )
    events = 0
    with client, client.messages.stream(**PARAMS) as stream:
        for event in stream:
            if event.type not in RAW_EVENTS:
                continue  # the SDK's own derived events (text, thinking, ...)
            events += 1
            if show is not None:
                detail = f" ({event.delta.type})" if event.type == "content_block_delta" else ""
                show(f"{event.type}{detail}")
        final: dict[str, Any] = stream.get_final_message().model_dump()
    return final, events


def _log_line(log: Path, start: str) -> str | None:
    """The message of the first line of a relay's JSON log that starts with `start`."""
    for line in log.read_text().splitlines():
        message = str(json.loads(line).get("message", "")) if line.startswith("{") else ""
        if message.startswith(start):
            return message
    return None


def _same_byte(local: str | None, remote: str | None) -> int | None:
    """The offset both relays' resume lines name, if they name the same one."""
    if local is None or remote is None:
        return None
    asked = re.search(r"from byte (\d+)", local)
    served = re.search(r"at byte (\d+)", remote)
    if asked is None or served is None or asked.group(1) != served.group(1):
        return None
    return int(asked.group(1))


class ResumeWatch:
    """Shows, as they happen, the local relay resuming and the remote relay serving it:
    from their logs, polled on a thread of its own (the proxy's must keep moving)."""

    LOCAL = "resuming POST /v1/messages from byte"
    REMOTE = "resumed stream"

    def __init__(self, logs: Path, show: Callable[[str], None]) -> None:
        self._logs = logs
        self._show = show
        self.local: str | None = None
        self.remote: str | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + 5
        while self.remote is None and time.monotonic() < deadline:
            if self.local is None and (line := _log_line(self._logs / "local.log", self.LOCAL)):
                self.local = line
                self._show(f"local relay:  {line.split(': ', 1)[0]}")
            if self.local and (line := _log_line(self._logs / "remote.log", self.REMOTE)):
                self.remote = line
                self._show(f"remote relay: {line} from its journal")
            time.sleep(0.01)

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join(6)


class Run:
    """The cut run's results, the fault-free run's to compare with."""

    def __init__(self) -> None:
        self.expected: dict[str, Any] = {}
        self.expected_events = 0
        self.final: dict[str, Any] | None = None
        self.events = 0
        self.upstream_requests = 0
        self.cuts = 0
        self.resumed: int | None = None  # the offset resumed from
        self.before_cut: list[str] = []  # the events the SDK had when the cut came


def _both_runs(sim: Sim, logs: Path, run: Run) -> None:
    """The fault-free run straight to upstream, then the cut one through both relays;
    every process it starts is stopped before it returns."""
    print(f"\n1. Fault-free: the SDK straight to upstream ({GAP:g} s of thinking)")
    clock = time.monotonic()
    run.expected, run.expected_events = _turn(sim.port, None)
    print(f"    {run.expected_events} events in {time.monotonic() - clock:.1f} s, message kept")
    stamp = time.monotonic()  # set again when the cut run starts
    events: list[str] = []

    def show(what: str) -> None:
        print(f"    {time.monotonic() - stamp:5.2f} s  {what}")

    def event(what: str) -> None:
        events.append(what)
        show(what)

    watch = ResumeWatch(logs, show)

    def cut(after: int) -> None:
        run.before_cut = list(events)
        show(f"-- the proxy cut the connection after {after} bytes, mid-keepalive --")
        watch.start()

    procs: list[subprocess.Popen[bytes]] = []
    proxy: CuttingProxy | None = None
    try:
        remote, remote_port = _start_relay(
            [
                f"--upstream=http://127.0.0.1:{sim.port}",
                f"--keepalive-interval={REMOTE_KEEPALIVE}",
                "--resume-grace=30",
            ],
            logs / "remote.log",
        )
        procs.append(remote)
        proxy = CuttingProxy(remote_port, cut)
        local, local_port = _start_relay(
            [f"--upstream=http://127.0.0.1:{proxy.port}", "--resume-upstream"],
            logs / "local.log",
        )
        procs.append(local)
        print("\n2. The SDK -> local relay -> cutting proxy -> remote relay -> upstream")
        requests = len(sim.state.requests)
        stamp = time.monotonic()
        run.final, run.events = _turn(local_port, event)
        run.upstream_requests = len(sim.state.requests) - requests
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        if proxy is not None:
            proxy.close()
            run.cuts = proxy.cuts
        watch.join()
        run.resumed = _same_byte(watch.local, watch.remote)


def main() -> int:
    began = time.monotonic()
    logs = Path(tempfile.mkdtemp(prefix="sse-relay-demo-resume-"))
    print("sse-relay demo-resume: a cut between two relays, invisible to the application.")
    print(f"  upstream      relay_sim: a thinking turn, silent {GAP:g} s after its first delta")
    print("  remote relay  keeps a resumable stream going when its client drops")
    print("  local relay   --resume-upstream, where the app's ANTHROPIC_BASE_URL points")
    print("  proxy         between them, resets the connection once the pause has begun")
    sim = Sim()
    run = Run()
    try:
        _both_runs(sim, logs, run)
    except anthropic.APIError as exc:  # what the demo exists to show never happens: say so
        print(f"    the SDK raised {type(exc).__qualname__}: {exc}")
    finally:
        sim.close()
    claims = [
        (
            run.cuts == 1 and run.before_cut[-1:] == ["content_block_delta (thinking_delta)"],
            "the proxy cut the stream once, mid-thinking",
        ),
        (
            run.resumed is not None,
            f"the local relay resumed it from the byte it had ({run.resumed})",
        ),
        (run.events == run.expected_events, f"the SDK read one stream of {run.events} events"),
        (run.final == run.expected, "its final message is identical to the fault-free run's"),
        (run.upstream_requests == 1, f"upstream saw {run.upstream_requests} request for it"),
    ]
    print()
    for holds, claim in claims:
        print(f"  [{'ok' if holds else 'FAILED'}] {claim}")
    print(f"\nThe relays' JSON logs: {logs}   ({time.monotonic() - began:.1f} s in all)")
    return 0 if all(holds for holds, _ in claims) else 1


if __name__ == "__main__":
    raise SystemExit(main())
