"""The relay people write first: aiohttp in, aiohttp out, chunks copied as they come.

A benchmark baseline, not part of sse-relay: no keepalives, no error frames, default
asyncio loop. One change from the first draft everyone writes: the client pool is
unbounded (aiohttp's default of 100 connections would queue the 101st stream).
Run: python bench/baselines/naive_aiohttp_relay.py --port 0 --upstream URL
"""

import argparse
import asyncio

from aiohttp import ClientSession, TCPConnector, web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


async def relay(request: web.Request) -> web.StreamResponse:
    session: ClientSession = request.app["session"]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    url = request.app["upstream"] + request.path_qs
    body = await request.read()
    async with session.request(request.method, url, headers=headers, data=body) as upstream:
        response = web.StreamResponse(status=upstream.status)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP:
                response.headers[name] = value
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def main(port: int, upstream: str) -> None:
    app = web.Application()
    app["upstream"] = upstream.rstrip("/")
    app["session"] = ClientSession(connector=TCPConnector(limit=0), auto_decompress=False)
    app.router.add_route("*", "/{tail:.*}", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    print(f"naive relay listening on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()  # until SIGTERM ends the process


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.upstream))
