"""`--workers N`: N relay processes sharing the listening ports, and the supervisor.

Each worker is this same program with the same arguments, plus the concrete ports the
supervisor chose, and `SSE_RELAY_WORKER_ID` (relay.ops.worker). Workers listen with
SO_REUSEPORT, so the kernel spreads new connections (and QUIC flows) across them.

Ports: before any worker starts, the supervisor binds one socket per TCP listener with
SO_REUSEPORT and never calls listen() on it. The kernel routes connections only to
listening sockets, so this socket takes no traffic; it reserves the port for as long
as the supervisor lives (across worker restarts, even with every worker down), fails
fast when the port is taken, and turns `:0` into one concrete port all workers get.

Signals: SIGTERM or SIGINT is forwarded to every worker; each drains on its own for up
to --drain-timeout; the supervisor exits 0 once all have stopped cleanly, 1 otherwise.
A worker that dies on its own is replaced after a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from relay.ops.access_log import configure_logging
from relay.ops.config import RelayConfig
from relay.ops.setting_table import format_listen
from relay.ops.worker import WORKER_ENV

log = logging.getLogger("sse_relay")

#: How long a worker may take to print its ready line.
READY_TIMEOUT = 30.0
#: Replacement backoff: doubles with each death in a row, up to the cap.
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 10.0
#: A worker that ran this long died "for the first time": the backoff starts over.
STABLE_SECONDS = 30.0
#: Beyond --drain-timeout, how long workers get to exit before they are killed.
STOP_GRACE = 10.0
# With an ephemeral TLS port and HTTP/3, tries at a TCP port whose UDP twin is free.
_PORT_PAIR_ATTEMPTS = 5


def supervise(config: RelayConfig, argv: Sequence[str]) -> int:
    """Run `config.workers` workers until SIGTERM/SIGINT; the process exit code."""
    configure_logging("supervisor")
    if config.journal == "memory":
        # The kernel hands a resume's connection to any worker, and each worker keeps
        # its own journals: the worker running the stream gets it 1 time in N.
        log.warning(
            "--workers %d with the journal in memory: a resume reaches the worker "
            "running its stream only by chance; give the workers a shared journal "
            "(--journal redis://...) if clients resume streams",
            config.workers,
        )
    try:
        reserved, pinned = _reserve_ports(config)
    except OSError as exc:
        print(f"sse-relay: error: cannot listen: {exc}", file=sys.stderr)
        return 1
    try:
        command = [*_program(), *argv, *pinned]
        return asyncio.run(Supervisor(command, config.workers, config.drain_timeout).run())
    finally:
        for sock in reserved:
            sock.close()


def _program() -> list[str]:
    if getattr(sys, "frozen", False):  # the single-file executable starts itself
        return [sys.executable]
    return [sys.executable, "-m", "relay"]


def _reserve_ports(config: RelayConfig) -> tuple[list[socket.socket], list[str]]:
    """Reservation sockets for the TCP listeners, and flags pinning their ports."""
    reserved, port = _reserve(config.listen_host, config.listen_port, udp_twin=False)
    pinned = ["--listen", format_listen(config.listen_host, port)]
    if config.tls_cert and config.tls_key:
        tls, port = _reserve(config.tls_listen_host, config.tls_listen_port, config.http3)
        reserved += tls
        pinned += ["--tls-listen", format_listen(config.tls_listen_host, port)]
    return reserved, pinned


def _reserve(host: str, port: int, udp_twin: bool) -> tuple[list[socket.socket], int]:
    """Bound, never listening, SO_REUSEPORT sockets on every address of `host`.

    Port 0 becomes the port the first bind got. With `udp_twin` (HTTP/3 is served on the
    same port number over UDP) the UDP port must be free too; it is only checked, never
    held: a bound UDP socket in a SO_REUSEPORT group would receive datagrams.
    """
    addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    attempts = _PORT_PAIR_ATTEMPTS if port == 0 and udp_twin else 1
    while True:
        attempts -= 1
        held: list[socket.socket] = []
        chosen = port
        try:
            for family, kind, proto, _, address in addresses:
                sock = socket.socket(family, kind, proto)
                held.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], chosen, *address[2:]))
                chosen = sock.getsockname()[1]
                if udp_twin:
                    with socket.socket(family, socket.SOCK_DGRAM) as udp:
                        udp.bind((address[0], chosen, *address[2:]))
            return held, chosen
        except OSError:
            for sock in held:
                sock.close()
            if not attempts:
                raise


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@dataclass
class _Slot:
    """One of the N worker places; a replacement takes the dead worker's id."""

    worker_id: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    deaths_in_a_row: int = 0

    def backoff(self, now: float) -> float:
        """Record a death now; the delay before the replacement starts."""
        if now - self.started >= STABLE_SECONDS:
            self.deaths_in_a_row = 0
        self.deaths_in_a_row += 1
        return min(FIRST_BACKOFF * 2.0 ** (self.deaths_in_a_row - 1), MAX_BACKOFF)


class Supervisor:
    """Starts the workers, prints one ready line, replaces the dead, stops them all."""

    def __init__(self, command: Sequence[str], workers: int, drain_timeout: float) -> None:
        self._command = list(command)
        self._slots = [_Slot(worker_id) for worker_id in range(1, workers + 1)]
        self._drain_timeout = drain_timeout
        self._stopping = asyncio.Event()
        self._signal = signal.SIGTERM

    async def run(self) -> int:
        """Until a signal has stopped every worker: 0 if all stopped cleanly, else 1."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop, sig)
        lines = await asyncio.gather(*(self._spawn(slot) for slot in self._slots))
        failed = False
        if self._stopping.is_set():
            pass  # a signal during startup: stop as at any other time
        elif all(lines):
            # The ready line of a single process, once every worker is ready.
            print(f"{lines[0].rstrip()} workers={len(self._slots)}", flush=True)
        else:
            log.error("a worker did not start; stopping the others")
            failed = True
            self._stop(signal.SIGTERM)
        watchers = [asyncio.create_task(self._watch(slot)) for slot in self._slots]
        await self._stopping.wait()
        # asyncio.wait, unlike a timeout around gather, leaves the watchers running, so
        # the ones of killed workers still reap them below.
        _, late = await asyncio.wait(watchers, timeout=self._drain_timeout + STOP_GRACE)
        if late:
            for slot in self._slots:
                if slot.process is not None and slot.process.returncode is None:
                    log.error("worker %d (pid %d) did not stop; killing it", *self._who(slot))
                    _signal(slot.process, signal.SIGKILL)
            await asyncio.gather(*watchers)
            return 1
        clean = [watcher.result() for watcher in watchers]
        log.info("all workers stopped")
        return 0 if all(clean) and not failed else 1

    async def _spawn(self, slot: _Slot) -> str:
        """Start the slot's worker; its ready line, or "" if it did not get ready."""
        process = await asyncio.create_subprocess_exec(
            *self._command,
            # stdin: the worker drains when it reads EOF here, i.e. when we are gone.
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, WORKER_ENV: str(slot.worker_id)},
        )
        slot.process, slot.started = process, asyncio.get_running_loop().time()
        if self._stopping.is_set():  # a signal came while it was being started
            _signal(process, self._signal)
        log.info("started worker %d (pid %d)", *self._who(slot))
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
        except TimeoutError:
            line = b""
            _signal(process, signal.SIGKILL)  # hung; one that closed its stdout is exiting
        if not line:
            if not self._stopping.is_set():
                log.error("worker %d (pid %d) did not get ready", *self._who(slot))
            return ""
        log.info("worker %d ready (pid %d)", *self._who(slot))
        return line.decode()

    async def _watch(self, slot: _Slot) -> bool:
        """Replace the slot's worker whenever it dies, until stopping; clean stop?"""
        loop = asyncio.get_running_loop()
        while True:
            assert slot.process is not None
            code = await slot.process.wait()
            if slot.process.stdin is not None:
                slot.process.stdin.close()
            if self._stopping.is_set():
                # Killed by the forwarded signal itself: it stopped before it could drain.
                clean = code in (0, -self._signal)
                if not clean:
                    log.error("worker %d (pid %d) %s", *self._who(slot), _describe_exit(code))
                return clean
            delay = slot.backoff(loop.time())
            log.warning(
                "worker %d (pid %d) %s; starting a new one in %.1f s",
                *self._who(slot),
                _describe_exit(code),
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
                return True  # stopped while this slot had no worker
            await self._spawn(slot)

    def _stop(self, sig: signal.Signals) -> None:
        """Forward `sig` to every worker; each drains and exits by itself."""
        if not self._stopping.is_set():
            log.info("%s: stopping %d workers", sig.name, len(self._slots))
        self._signal = sig
        self._stopping.set()
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                _signal(slot.process, sig)

    @staticmethod
    def _who(slot: _Slot) -> tuple[int, int]:
        assert slot.process is not None
        return slot.worker_id, slot.process.pid


def _signal(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """Signal a worker without reaping it: Popen.send_signal polls first, and a poll that
    reaps an exited worker leaves asyncio's child watcher to report its exit as 255."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
