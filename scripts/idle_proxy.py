"""An idle-killing TCP proxy for the demo: the load balancer the relay exists for.

A copy in spirit of `tests/idleproxy.py` (tests/ is not installed, and the demo must
run from a checkout with nothing but the venv), written on asyncio so it is small.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading

# SO_LINGER on, zero seconds: close() sends RST, as an idle-timeout balancer resets.
_RESET = struct.pack("ii", 1, 0)


class IdleKillingProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port`, on its own thread and loop.

    A connection with no byte in either direction for `idle` seconds is reset on both
    sides: an idle timeout as load balancers have them (some close cleanly instead).
    """

    def __init__(self, target_port: int, idle: float) -> None:
        self._target_port = target_port
        self._idle = idle
        self.kills = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-proxy", daemon=True)

    def start(self) -> IdleKillingProxy:
        self._thread.start()
        if not self._ready.wait(10) or not self.port:
            raise RuntimeError("idle proxy did not start")
        return self

    def close(self) -> None:
        """Stops listening, ends every connection, and joins the thread."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        # Cancelled and awaited here, not left pending: a pending task destroyed with
        # the loop would print a warning into the demo's output.
        assert self._server is not None
        self._server.close()
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        # Python 3.11's start_server reports a handler cancelled by `_shutdown` as an
        # exception in a callback, printed into the demo's output: end quietly instead.
        with contextlib.suppress(asyncio.CancelledError):
            await self._proxy(client_r, client_w)

    async def _proxy(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            client_w.close()
            return
        last = [loop.time()]  # a cell both pumps touch: the pair's last byte, either way

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    last[0] = loop.time()
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        pumps = asyncio.gather(pump(client_r, up_w), pump(up_r, client_w))
        try:
            # The idle timer: wake when the pair could first have been quiet `idle` s.
            while not pumps.done():
                quiet = loop.time() - last[0]
                if quiet >= self._idle:
                    self.kills += 1
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(pumps), self._idle - quiet)
        finally:
            for writer in (client_w, up_w):
                sock = writer.get_extra_info("socket")
                if sock is not None and not pumps.done():
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                writer.transport.abort()
            pumps.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await pumps
