"""What sits between the load generator and the emitter, one class per contender.

Each `start`s its process pinned to the contender core and returns a `Running` that
says where to connect (HTTP/1.1, and h2c when it has it) and whose CPU to count.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from bench.certs import run_certificates
from bench.proc_stats import children
from bench.procs import CONTENDER_CPUS, HARNESS_CPUS, ServerProcess, free_port, wait_for_port

_LISTENING = re.compile(rb"listening on http://[^:]+:(\d+)")
_H3_LISTENING = re.compile(rb"h3://[^:]+:(\d+)")
_ADMIN = re.compile(rb"admin=(http://\S+)")
# Debian puts nginx in /usr/sbin, which is not on every user's PATH.
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class Running:
    """A started contender: `url` speaks HTTP/1.1, `h2c_url` (if any) h2c."""

    key: str
    url: str
    pids: tuple[int, ...] = ()
    h2c_url: str | None = None
    processes: list[ServerProcess] = field(default_factory=list)
    #: HTTP/3 (UDP), with the CA file its certificate chains to.
    h3_url: str | None = None
    ca_file: str = ""
    #: Request headers the load generator must send ("name: value").
    request_headers: tuple[str, ...] = ()
    #: Processes the contender hands work to (its Redis): counted apart from `pids`.
    side_pids: tuple[int, ...] = ()
    #: The relay's admin listener (/metrics), when it has one.
    admin_url: str | None = None

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


class Contender(ABC):
    """A name for the tables, a key for the JSON, and how to start it."""

    key = ""
    label = ""

    @abstractmethod
    def start(self, upstream: str, workdir: Path, keepalive_interval: float) -> Running: ...


class Direct(Contender):
    """No middlebox: the floor every other figure is compared with."""

    key = "direct"
    label = "direct (floor)"

    def start(self, upstream: str, workdir: Path, keepalive_interval: float) -> Running:
        return Running(self.key, upstream)


class SseRelay(Contender):
    """sse-relay itself; `scanner="python"` forces the pure-Python twin at run time."""

    def __init__(self, scanner: str) -> None:
        self.scanner = scanner
        self.key = f"relay-{scanner}"
        self.label = f"sse-relay ({scanner})"

    def start(self, upstream: str, workdir: Path, keepalive_interval: float) -> Running:
        # Off: its fixed default port would clash between the two relays.
        return self._start(upstream, workdir, keepalive_interval, ["--admin-listen", "off"])

    def _start(
        self, upstream: str, workdir: Path, keepalive_interval: float, extra: list[str]
    ) -> Running:
        env = {"SSE_RELAY_NO_EXTENSIONS": "1"} if self.scanner == "python" else {}
        args = [
            sys.executable,
            "-m",
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--keepalive-interval",
            str(keepalive_interval),
            "--max-streams",
            "20000",  # the idle scenario's 10,000 streams are within, not at, the limit
            "--drain-timeout",
            "1",
            *self._http3_args(workdir),
            *extra,
        ]
        process = ServerProcess(
            args, workdir / f"{self.key}.log", cpus=CONTENDER_CPUS, ready=_LISTENING, env=env
        )
        match = _LISTENING.search(process.ready_line)
        assert match is not None
        active = re.search(rb"scanner=(\w+)", process.ready_line)
        if active is None or active.group(1).decode() != self.scanner:
            process.stop()
            raise RuntimeError(f"wanted the {self.scanner} scanner: {process.ready_line!r}")
        url = f"http://127.0.0.1:{match.group(1).decode()}"
        h3 = _H3_LISTENING.search(process.ready_line)
        admin = _ADMIN.search(process.ready_line)
        # One port serves HTTP/1.1 and h2c (prior knowledge); HTTP/3 has its own.
        return Running(
            self.key,
            url,
            (process.pid,),
            h2c_url=url,
            processes=[process],
            h3_url=f"https://127.0.0.1:{h3.group(1).decode()}" if h3 else None,
            ca_file=str(workdir / "ca.pem"),
            admin_url=admin.group(1).decode() if admin else None,
        )

    @staticmethod
    def _http3_args(workdir: Path) -> list[str]:
        """An HTTP/3 listener (QUIC is always TLS), with a certificate for `localhost`
        from a CA made for this run."""
        certs = run_certificates(workdir)
        cert, key = certs.cert, certs.key
        return [
            *("--tls-listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)),
            "--http3",
        ]


class TlsUpstreamRelay(SseRelay):
    """sse-relay (Cython scanner) to the emitter's TLS listener, verifying it against the
    run's CA: `protocol` "auto" (HTTP/2 by ALPN, as the real API picks) or "http/1.1"
    (the default, `--upstream-protocol http/1.1`: ALPN offers only that)."""

    def __init__(self, protocol: str) -> None:
        super().__init__("cython")
        self.protocol = protocol
        self.key = "relay-tls-auto" if protocol == "auto" else "relay-tls-h1"
        self.label = LABELS_TLS[self.key]

    def start(self, upstream: str, workdir: Path, keepalive_interval: float) -> Running:
        if not upstream.startswith("https://"):
            raise ValueError(f"{self.key} wants the emitter's TLS URL, not {upstream}")
        extra = [
            *("--admin-listen", "off"),
            *("--upstream-ca", str(run_certificates(workdir).ca)),
            *("--upstream-protocol", self.protocol),
        ]
        return self._start(upstream, workdir, keepalive_interval, extra)


LABELS_TLS = {
    "relay-tls-auto": "sse-relay (auto: h2 upstream)",
    "relay-tls-h1": "sse-relay (http/1.1 upstream, the default)",
    "nginx-tls": "nginx (https upstream, keepalive pool)",
}


class ResumableRelay(SseRelay):
    """sse-relay (Cython scanner) for the cost of resumability (bench/resume_cost.py):
    `journal` "off" (no header: the plain relay, same flags otherwise), "memory"
    (`relay-resumable: 1` on every request) or "redis" (that, and `--journal` on a
    redis-server started with it, on the harness core as if on another machine).

    `retain` is `--resume-retain`: short for the CPU runs (the journals of one round
    must not pile up into the next), long for the memory runs (still held when read).
    Each has an admin listener on a free port, whose metrics prove the streams were
    resumable."""

    def __init__(self, journal: str, retain: float) -> None:
        super().__init__("cython")
        self.journal = journal
        self.retain = retain
        self.key = f"resume-{journal}"
        self.label = LABELS_RESUME[journal]

    def start(self, upstream: str, workdir: Path, keepalive_interval: float) -> Running:
        extra = [
            *("--admin-listen", "127.0.0.1:0"),
            *("--resume-retain", f"{self.retain:g}"),
            # A client gone mid-stream (none should be) must not keep upstream busy.
            *("--resume-grace", "1"),
            # Every stream journaled: the default 1 GiB could refuse some at scale.
            *("--resume-max-total", str(2**40)),
        ]
        redis: ServerProcess | None = None
        if self.journal == "redis":
            redis, url = start_redis(workdir)
            extra += ["--journal", url]
        try:
            running = self._start(upstream, workdir, keepalive_interval, extra)
        except BaseException:
            if redis is not None:
                redis.stop()
            raise
        if self.journal != "off":
            running.request_headers = ("relay-resumable: 1",)
        if redis is not None:
            running.processes.append(redis)  # stopped after the relay, which flushes to it
            running.side_pids = (redis.pid,)
        return running


LABELS_RESUME = {
    "off": "sse-relay (plain)",
    "memory": "sse-relay (resumable, memory)",
    "redis": "sse-relay (resumable, Redis)",
}


def start_redis(workdir: Path) -> tuple[ServerProcess, str]:
    """A fresh, empty redis-server on a free 127.0.0.1 port: no snapshots, no append-only
    file (the journal is a cache with a TTL; disk writes would time the disk)."""
    port = free_port()
    data = workdir / f"redis-{port}"
    data.mkdir()
    args = [
        REDIS_SERVER,
        *("--bind", "127.0.0.1", "--port", str(port)),
        *("--save", "", "--appendonly", "no", "--dir", str(data)),
        # To a file: nobody reads its stdout once it runs, and a full pipe would block it.
        *("--logfile", str(data / "redis.log")),
    ]
    process = ServerProcess(args, workdir / f"redis-{port}.log", cpus=HARNESS_CPUS)
    try:
        wait_for_port(port)
    except RuntimeError:
        process.stop()
        raise
    return process, f"redis://127.0.0.1:{port}/0"


class Nginx(Contender):
    """Debian's nginx as a plain streaming reverse proxy: 1 worker, buffering off."""

    key = "nginx"
    label = "nginx (1 worker)"

    def start(self, upstream: str, workdir: Path, keepalive_interval: float) -> Running:
        prefix = workdir / self.key
        prefix.mkdir(exist_ok=True)
        h1_port, h2c_port = free_port(), free_port()
        config = prefix / "nginx.conf"
        config.write_text(nginx_config(prefix, upstream, h1_port, h2c_port, workdir))
        args = [NGINX, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")]
        process = ServerProcess(args, workdir / f"{self.key}.log", cpus=CONTENDER_CPUS)
        wait_for_port(h1_port)
        wait_for_port(h2c_port)
        # The master only supervises, but its CPU counts too.
        pids = (process.pid, *_worker_pids(process.pid))
        return Running(
            self.key,
            f"http://127.0.0.1:{h1_port}",
            pids,
            f"http://127.0.0.1:{h2c_port}",
            processes=[process],
        )


def _worker_pids(master: int, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while not (workers := children(master)) and time.monotonic() < deadline:
        time.sleep(0.02)
    if not workers:
        raise RuntimeError("nginx started no worker")
    return workers


class NginxTls(Nginx):
    """nginx to the emitter's TLS listener: `proxy_pass https://`, the certificate
    verified against the run's CA, sessions reused, a keepalive pool (HTTP/1.1: nginx
    1.22 proxies only that upstream)."""

    key = "nginx-tls"
    label = LABELS_TLS["nginx-tls"]

    def start(self, upstream: str, workdir: Path, keepalive_interval: float) -> Running:
        if not upstream.startswith("https://"):
            raise ValueError(f"{self.key} wants the emitter's TLS URL, not {upstream}")
        return super().start(upstream, workdir, keepalive_interval)


def nginx_config(prefix: Path, upstream: str, h1_port: int, h2c_port: int, workdir: Path) -> str:
    """One worker; HTTP/1.1 on one port, h2c by prior knowledge on another; to an
    `https://` upstream, TLS verified against the run's CA (the leaf is for localhost)."""
    scheme, upstream_host = upstream.split("://", 1)
    tls = ""
    if scheme == "https":
        tls = f"""
            proxy_ssl_trusted_certificate {run_certificates(workdir).ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;"""
    temp = " ".join(
        f"{kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    return f"""
daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 19500; }}
http {{
    access_log off;
    {temp} uwsgi_temp_path {prefix / "uwsgi"}; scgi_temp_path {prefix / "scgi"};
    keepalive_requests 1000000;
    http2_max_concurrent_streams 1000;
    upstream emitter {{ server {upstream_host}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{h1_port} backlog=4096;
        listen 127.0.0.1:{h2c_port} http2 backlog=4096;
        location / {{
            proxy_pass {scheme}://emitter;{tls}
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


class NaiveRelay(Contender):
    """bench/baselines/naive_aiohttp_relay.py: aiohttp streaming through."""

    key = "naive"
    label = "naive aiohttp relay"

    def start(self, upstream: str, workdir: Path, keepalive_interval: float) -> Running:
        script = Path(__file__).parent / "baselines" / "naive_aiohttp_relay.py"
        args = [sys.executable, str(script), "--port", "0", "--upstream", upstream]
        process = ServerProcess(args, workdir / "naive.log", cpus=CONTENDER_CPUS, ready=_LISTENING)
        match = _LISTENING.search(process.ready_line)
        assert match is not None
        return Running(
            self.key,
            f"http://127.0.0.1:{match.group(1).decode()}",
            (process.pid,),
            processes=[process],
        )


ALL: tuple[Contender, ...] = (
    Direct(),
    SseRelay("cython"),
    SseRelay("python"),
    Nginx(),
    NaiveRelay(),
    TlsUpstreamRelay("auto"),
    TlsUpstreamRelay("http/1.1"),
    NginxTls(),
)
