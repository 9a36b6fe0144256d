"""`sse-relay probe`: finds a path's idle timeout, how streams die on it, and whether
keepalive frames cross it, against an idle-killing proxy in front of the sim.

Timings: the proxy kills after 2 s (1.5 s in the retry case); tolerances are a second
and more, and every probe is bounded by its own --max-seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from relay.ops import cli
from relay.ops.probe_report import Check, ProbeReport
from relay.ops.probe_stream import (
    CLOSED,
    COMPLETED,
    ENDED,
    ERROR_EVENT,
    HTTP_ERROR,
    RESET,
    ProbeStream,
    StreamResult,
    Target,
)
from relay_sim.script import SimScript
from tests.idleproxy import IdleKillingProxy
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

IDLE = 2.0


def run_probe(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str, float]:
    """`sse-relay probe ARGS` in-process: exit code, stdout, stderr, wall-clock seconds."""
    began = time.monotonic()
    code = cli.main(["probe", *args])
    took = time.monotonic() - began
    out, err = capsys.readouterr()
    return code, out, err, took


@pytest.fixture(scope="module")
def killed() -> Iterator[tuple[int, dict[str, Any], str, float, int]]:
    """One --json probe through a proxy that resets streams idle for IDLE s:
    (exit code, findings, stderr, seconds taken, the proxy's kills)."""
    # capsys is per test: this module-scoped run captures by hand.
    out, err = io.StringIO(), io.StringIO()
    with SimServer() as sim:
        proxy = IdleKillingProxy(sim.port, idle=IDLE)
        began = time.monotonic()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(
                    ["probe", f"http://127.0.0.1:{proxy.port}", "--max-seconds", "20", "--json"]
                )
        finally:
            proxy.close()
        took = time.monotonic() - began
    yield code, json.loads(out.getvalue()), err.getvalue(), took, proxy.kills


def test_probe_finds_the_idle_timeout_and_how_the_stream_died(
    killed: tuple[int, dict[str, Any], str, float, int],
) -> None:
    code, found, err, took, kills = killed
    assert code == 0
    kill = found["idle_kill"]
    assert kill["seen"] is True and kill["how"] == RESET  # the test proxy resets (SO_LINGER 0)
    assert IDLE - 0.25 <= kill["after_s"] <= IDLE + 1.5
    # Pings every 0.5 s reached the client and kept their stream open past the kill;
    # only the silent stream was killed.
    ping = found["keepalives"]["ping"]
    assert ping["arrived"] >= 2 and ping["kept_alive"] is True and ping["died"] is None
    assert ping["open_s"] > kill["after_s"]
    assert kills == 1
    advice = found["recommendation"]
    assert 0 < advice["keepalive_interval_s"] < kill["after_s"]
    assert advice["keepalive_interval_s"] == pytest.approx(kill["after_s"] / 2, abs=0.15)
    assert advice["keepalive_frame"] in ("ping", "comment")
    assert advice["flags"].startswith(f"--keepalive-interval {advice['keepalive_interval_s']:g}")
    comment = found["keepalives"]["comment"]
    if comment["tested"]:  # a sim that can send comments
        assert comment["arrived"] >= 2 and comment["kept_alive"] is True
    else:
        assert "comment_every" in comment["note"] and advice["keepalive_frame"] == "ping"
    # Bounded: done once it knew, well inside --max-seconds; progress went to stderr.
    assert found["elapsed_s"] < 20 and took < 20
    assert "probe: the silent stream died after" in err
    assert all(line.startswith("probe: ") for line in err.splitlines())


def test_probe_json_shape(killed: tuple[int, dict[str, Any], str, float, int]) -> None:
    found = killed[1]
    assert set(found) == {
        "url",
        "max_seconds",
        "elapsed_s",
        "idle_kill",
        "keepalives",
        "recommendation",
        "notes",
    }
    assert found["url"].endswith("/v1/messages") and found["max_seconds"] == 20
    assert set(found["idle_kill"]) == {
        "seen",
        "after_s",
        "how",
        "status",
        "detail",
        "longest_silence_s",
    }
    assert set(found["keepalives"]) == {"ping", "comment"}
    for check in found["keepalives"].values():
        assert set(check) == {
            "tested",
            "every_s",
            "arrived",
            "open_s",
            "kept_alive",
            "died",
            "note",
        }
    assert set(found["recommendation"]) == {
        "keepalive_interval_s",
        "keepalive_frame",
        "flags",
        "why",
    }
    assert isinstance(found["notes"], list)


def test_probe_tries_shorter_keepalives_when_the_path_kills_sooner(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the default budget the first pings go every 5 s, too slow for a 1.5 s kill:
    the probe tries again with a third of the kill time, and still ends in seconds."""
    with SimServer() as sim:
        proxy = IdleKillingProxy(sim.port, idle=1.5)
        try:
            code, out, err, took = run_probe(capsys, f"http://127.0.0.1:{proxy.port}")
        finally:
            proxy.close()
    assert code == 0, err
    assert re.search(r"idle kill +after (1\.[4-9]|2\.\d|3\.0) s of silence: connection reset", out)
    assert re.search(
        r"event: ping +arrive \(\d+ .*one sent every 0\.\d+ s\); the stream outlived", out
    )
    assert "sent every 5 s, they could not keep a stream open" in out
    assert re.search(r"recommend +--keepalive-interval (0\.[5-9]|1) ", out), out
    assert "probe: again with a ping every" in err
    assert took < 60  # against a default --max-seconds of 300


@pytest.fixture(scope="module")
def tls_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimServer, Path]]:
    """The sim over TLS (a `localhost` certificate) and its CA file."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    ca_file = tmp_path_factory.mktemp("probe-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with SimServer(ssl=context) as sim:
        yield sim, ca_file


def test_no_idle_kill_up_to_the_bound_over_tls(
    capsys: pytest.CaptureFixture[str],
    tls_sim: tuple[SimServer, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim, ca_file = tls_sim
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the system store, as a user has it
    url = f"https://localhost:{sim.port}"
    code, out, err, took = run_probe(capsys, url, "--max-seconds", "5")
    assert code == 0, err
    match = re.search(r"idle kill +no idle kill seen up to (\d+\.\d) s", out)
    assert match and 2.0 <= float(match.group(1)) <= 5.0, out
    assert re.search(r"event: ping +arrive \(\d+ ", out)
    assert "raise --max-seconds" in out
    assert took < 5 + 3  # its own bound, plus interpreter slack


def test_probe_refuses_what_it_cannot_probe(capsys: pytest.CaptureFixture[str]) -> None:
    with SimServer(SimScript(status=529)) as sim:
        code, _, err, _ = run_probe(capsys, sim.url, "--max-seconds", "10")
        assert code == 1 and "HTTP 529" in err and "sse-relay sim" in err
        port = sim.port
    code, _, err, _ = run_probe(capsys, f"http://127.0.0.1:{port}", "--max-seconds", "10")
    assert code == 1 and "cannot connect" in err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["probe", "ftp://example.com"])
    assert exit_.value.code == 2


def test_probe_through_a_relay_names_the_paths_own_keepalives(
    capsys: pytest.CaptureFixture[str], sim: SimServer
) -> None:
    """A path that already has a relay inserting `: keepalive` comments: the silent
    stream is never silent, and the probe says so instead of reporting a timeout."""
    with RelayProcess(sim.url, keepalive=0.5) as relay:
        proxy = IdleKillingProxy(relay.port, idle=IDLE)
        try:
            code, out, err, _ = run_probe(
                capsys, f"http://127.0.0.1:{proxy.port}", "--max-seconds", "6", "--json"
            )
        finally:
            proxy.close()
    assert code == 0, err
    found = json.loads(out)
    assert found["idle_kill"]["seen"] is False and proxy.kills == 0
    assert found["idle_kill"]["longest_silence_s"] < IDLE
    assert found["recommendation"]["keepalive_interval_s"] is None
    assert "keepalive frames from the path itself" in found["notes"][0]
    assert int(found["notes"][0].split("got ")[1].split()[0]) >= 3  # the relay's comments


def stream_end(url: str, **script: object) -> StreamResult:
    return asyncio.run(ProbeStream(Target.from_url(url), script).run())


def test_stream_endings_are_named(sim: SimServer) -> None:
    """Each way a stream can end is told apart, as the probe reports how one died."""
    done = stream_end(sim.url)
    assert done.how == COMPLETED and done.events == 14 and done.status == 200
    assert stream_end(sim.url, error_after=3).how == ERROR_EVENT
    assert stream_end(sim.url, end_without_stop=True).how == ENDED
    refused = stream_end(sim.url, status=504)
    assert refused.how == HTTP_ERROR and refused.status == 504 and "timeout_error" in refused.detail
    # The sim aborts with nothing unread: a FIN, not a reset (the proxy test has those).
    assert stream_end(sim.url, drop_after=3).how == CLOSED
    pinged = stream_end(sim.url, gaps=[[1, 1.2]], ping_every=0.5)
    assert pinged.how == COMPLETED and pinged.pings == 2 and pinged.comments == 0


def test_comment_frames_are_counted() -> None:
    """Comments come from a canned server: the sim sends none of its own."""
    body = (
        b"event: message_start\ndata: {}\n\n: keepalive\n\n"
        b'event: ping\ndata: {"type": "ping"}\n\n: keepalive\r\n\r\n'
        b"event: message_stop\ndata: {}\n\n"
    )

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"sse-relay probe")  # the end of the request body
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + body)
        writer.close()

    async def main() -> StreamResult:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await ProbeStream(Target.from_url(f"http://127.0.0.1:{port}"), {}).run()

    result = asyncio.run(main())
    assert (result.how, result.comments, result.pings, result.events) == (COMPLETED, 2, 1, 2)


def _result(how: str, ended: float, pings: int = 0, comments: int = 0) -> StreamResult:
    """A stream whose gap began at 0 and whose last byte came at 0 (silent) or at its end."""
    last = 0.0 if not (pings or comments) else ended - 0.1
    silence = ended - last
    return StreamResult(how, "", 200, 0.0, 0.0, last, ended, silence, ended, 2, pings, comments)


def _report(silent: StreamResult, ping: StreamResult, comment: StreamResult | None) -> ProbeReport:
    comment_check = Check("comment", 5.0, comment) if comment else Check.untested("comment", "-")
    return ProbeReport("u", 300, 1, silent, Check("ping", 5.0, ping), comment_check)


def test_recommendations() -> None:
    # A 120 s kill: the relay's default 15 s is well inside; comments are preferred.
    report = _report(
        _result(RESET, 120), _result("stopped", 180, pings=30), _result("stopped", 180, comments=30)
    )
    assert report.recommendation().flags == "--keepalive-interval 15 --keepalive-frame comment"
    # Pings arrive and the stream dies anyway: not an idle timeout, nothing to set.
    report = _report(_result(CLOSED, 60), _result(CLOSED, 60.5, pings=10), None)
    advice = report.recommendation()
    assert advice.interval is None and "other than silence" in advice.why
    assert "the stream died 60.5 s into the gap" in report.summary()
    # Nothing arrives: the path buffers or strips them.
    report = _report(_result(RESET, 60), _result(RESET, 60), _result(RESET, 60))
    assert report.recommendation().interval is None
    assert "strips or buffers" in report.recommendation().why
    # No kill in 40 s: half the survived silence.
    report = _report(_result(COMPLETED, 40), _result(COMPLETED, 40, pings=8), None)
    assert report.recommendation().flags == "--keepalive-interval 15 --keepalive-frame ping"
    assert "no idle kill seen up to 40.0 s" in report.summary()
    report = _report(_result(COMPLETED, 9), _result(COMPLETED, 9, pings=8), None)
    assert report.recommendation().interval == 4
