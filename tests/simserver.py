"""The simulated Messages API in a background thread, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from ssl import SSLContext
from types import TracebackType

from relay_sim.script import RecordedRequest, SimScript
from relay_sim.sim import run, start
from relay_sim.state import CloseRecord, SimState
from tests.clients import wait_for


class SimServer:
    """The sim on 127.0.0.1 (a free port) in a daemon thread, on its own event loop.

    The loop is uvloop when installed, as for `python -m relay_sim.sim`. It speaks HTTP/1.1,
    and HTTP/2 to clients that open with its preface (h2c). With `ssl` (a server context)
    it speaks TLS only, offering h2 and http/1.1 by ALPN; `url` still says http://, so
    build https URLs. Each HTTP/2 connection advertises `h2_max_streams` concurrent streams.

    `script` is the default for every request (an `x-sim-script` header still overrides
    fields); it can be reassigned while running. `requests`, `closes` and `connections`
    are live views of what the server has seen.
    """

    def __init__(
        self,
        script: SimScript | None = None,
        ssl: SSLContext | None = None,
        h2_max_streams: int = 100,
    ) -> None:
        self._state = SimState(script=script or SimScript(), h2_max_streams=h2_max_streams)
        self._tls = ssl
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sim-server", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def script(self) -> SimScript:
        return self._state.script

    @script.setter
    def script(self, script: SimScript) -> None:
        self._state.script = script

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._state.requests

    @property
    def closes(self) -> list[CloseRecord]:
        return self._state.closes

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return self._state.connections

    def start(self) -> SimServer:
        self._thread.start()
        self._ready.wait(timeout=10)
        if self._failure is not None or not self.port:
            raise RuntimeError("sim server did not start") from self._failure
        return self

    def stop(self) -> None:
        """Closes the listener and every connection, then joins the thread."""
        if self._thread.is_alive() and self._loop and self._stopping:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=10)

    def goaway_all(self) -> None:
        """GOAWAY on every HTTP/2 connection, naming the last stream whose response has
        begun: those run to their end, later ones are refused (REFUSED_STREAM), and each
        connection closes with its last stream. Returns once the frames are sent."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._goaway_all(), self._loop).result(timeout=5)

    async def _goaway_all(self) -> None:
        self._state.goaway_all()

    def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        wait_for(predicate, timeout)

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            run(self._serve())
        except BaseException as exc:  # surfaced by start() in the test's thread
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await start(self._state, "127.0.0.1", 0, self._tls)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        self._state.abort_all()
        await asyncio.sleep(0)  # connection_lost runs; asyncio.run then unwinds responders
