"""The relay process: listeners on a uvloop loop, a ready line, clean exit on signals."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import ssl

from relay import __version__
from relay.core.journal import IMPLEMENTATION as JOURNAL
from relay.core.registry import StreamRegistry
from relay.core.resume_store import ResumeLimits, ResumeStore
from relay.edge.context import EdgeContext
from relay.edge.h3 import serve_h3
from relay.edge.listener import FirstBytesProtocol
from relay.edge.quic import QuicListener
from relay.journal.redis_journal import RedisJournal
from relay.ops.access_log import configure_logging
from relay.ops.admin import serve_admin
from relay.ops.config import ConfigError, RelayConfig
from relay.ops.metrics import RelayMetrics
from relay.ops.setting_table import format_listen
from relay.ops.worker import watch_supervisor
from relay.sse.scanner import IMPLEMENTATION
from relay.upstream.body_pump import IMPLEMENTATION as PUMP
from relay.upstream.routes import UpstreamRoutes

log = logging.getLogger("sse_relay")

# After the drain, time for the last error frames to leave the socket buffers.
_FLUSH_SECONDS = 0.2
# With an ephemeral TLS port, tries at a TCP port whose UDP twin is free for HTTP/3.
_PORT_PAIR_ATTEMPTS = 5
# How long clients may cache the HTTP/3 advertisement (RFC 7838's default, one day).
_ALT_SVC_MAX_AGE = 86400


def server_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS for clients: HTTP/2 preferred, HTTP/1.1 offered, by ALPN."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--tls-cert/--tls-key: {cert} and {key} do not load: {exc}") from None
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def _tune_garbage_collector() -> None:
    """Keep full collections from stalling the loop.

    Everything alive at start-up (modules, config, listeners) is frozen out of the
    collector's sight, and young collections run less often: with 10,000 live streams a
    full collection otherwise walks every stream's objects and stops all keepalives for
    hundreds of milliseconds (seen in `make bench`'s idle scale).
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _raise_file_limit() -> None:
    """Every stream holds two sockets: take the whole hard limit, as nginx and Envoy do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _address(scheme: str, server: asyncio.Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"{scheme}://{format_listen(host, port)}"


async def _tls_listeners(
    context: EdgeContext, reuse_port: bool
) -> tuple[asyncio.Server, QuicListener | None]:
    """The TLS listener and, with --http3, the QUIC listener on the same port number.

    HTTP/3 is found through Alt-Svc, which names a port, not a protocol: the UDP port
    must equal the TCP one. With an ephemeral TLS port that UDP port may be taken, so
    another pair is tried.
    """
    config = context.config
    assert config.tls_cert is not None and config.tls_key is not None
    tls = server_tls_context(config.tls_cert, config.tls_key)
    loop = asyncio.get_running_loop()
    attempts = 1 if config.tls_listen_port else _PORT_PAIR_ATTEMPTS
    while True:
        server = await loop.create_server(
            lambda: FirstBytesProtocol(context),
            config.tls_listen_host,
            config.tls_listen_port,
            ssl=tls,
            reuse_address=True,
            reuse_port=reuse_port,
            backlog=4096,
        )
        if not config.http3:
            return server, None
        port = server.sockets[0].getsockname()[1]
        try:
            quic = await serve_h3(context, config.tls_listen_host, port, reuse_port=reuse_port)
        except OSError:
            server.close()
            attempts -= 1
            if not attempts:
                raise
            continue
        context.alt_svc = f'h3=":{port}"; ma={_ALT_SVC_MAX_AGE}'.encode()
        return server, quic


async def serve(config: RelayConfig, worker_id: int | None = None) -> None:
    """Accept clients until SIGTERM or SIGINT.

    As worker `worker_id` of a supervisor (--workers), every listener shares its port
    with the other workers (SO_REUSEPORT), and the supervisor's exit drains too.
    """
    configure_logging(worker_id)  # one JSON object per line
    reuse_port = worker_id is not None
    _raise_file_limit()
    loop = asyncio.get_running_loop()
    routes = UpstreamRoutes(config)
    metrics = RelayMetrics()
    shared: RedisJournal | None = None
    if config.journal != "memory":
        shared = RedisJournal(
            config.journal, config.resume_retain, config.resume_max_bytes, metrics
        )
    resume = ResumeStore(
        ResumeLimits(
            config.resume_grace,
            config.resume_retain,
            config.resume_max_bytes,
            config.resume_max_total,
        ),
        shared,
    )
    streams = StreamRegistry(routes, metrics, config.max_streams, resume, config.replay_retries)
    metrics.watch_resume(resume.detached, resume.journal_bytes)
    context = EdgeContext(config, streams, metrics)
    servers = [
        await loop.create_server(
            lambda: FirstBytesProtocol(context),
            config.listen_host,
            config.listen_port,
            reuse_address=True,
            reuse_port=reuse_port,
            backlog=4096,
        )
    ]
    addresses = [_address("http", servers[0])]
    quic: QuicListener | None = None
    if config.tls_cert and config.tls_key:
        tls_server, quic = await _tls_listeners(context, reuse_port)
        servers.append(tls_server)
        addresses.append(_address("https", tls_server))
        if quic is not None:
            addresses.append(_address("h3", tls_server))
    # After the client listeners: an admin listener that answers means they are bound.
    admin = await serve_admin(config, streams, metrics, worker_id)
    if admin is not None:
        addresses.append("admin=" + _address("http", admin))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if worker_id is not None:
        await watch_supervisor(stop.set)
    _tune_garbage_collector()
    print(
        f"sse-relay {__version__} listening on {' '.join(addresses)} "
        f"upstream={config.upstreams[0].url} scanner={IMPLEMENTATION} body_pump={PUMP} "
        f"journal={JOURNAL}",
        flush=True,
    )
    try:
        await stop.wait()
        # Graceful drain: stop accepting, let streams finish, end the rest cleanly.
        for server in servers:
            server.close()
        if quic is not None:
            quic.accepting = False  # live QUIC connections keep their socket
        live = len(streams.active) + len(streams.waiting)
        log.info("draining %d streams for up to %g s", live, config.drain_timeout)
        await streams.drain(config.drain_timeout)
        await asyncio.sleep(_FLUSH_SECONDS)
    finally:
        for server in servers:
            server.close()
        if admin is not None:
            admin.close()  # only now: /readyz said "draining" while the drain ran
        if quic is not None:
            quic.close()
        routes.close()
        if shared is not None:
            await shared.close()
        resume.close()
        log.info("sse-relay stopped")
