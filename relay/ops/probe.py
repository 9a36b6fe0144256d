"""`sse-relay probe URL`: how long an idle stream survives on a real network path.

A platform team runs `sse-relay sim` behind its own load balancer and probes that URL
from the client side. The probe scripts the sim through `x-sim-script` and opens, at
once:
- a silent stream, one long scripted gap: the silence after which the path kills it,
  and how it died (reset, clean close, an HTTP error, an SSE error event);
- a stream that gets `event: ping` frames inside the same gap, and one that gets
  `: comment` frames (if the sim can send them): whether each reaches the client and
  keeps the stream open past the kill.
Then it recommends a `--keepalive-interval` (half the kill time, capped at the
relay's default) and a `--keepalive-frame`. Everything ends within `--max-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Callable, Sequence

from relay.ops.probe_report import Check, ProbeReport, describe
from relay.ops.probe_stream import (
    COMPLETED,
    ERROR,
    GAP_AFTER,
    HTTP_ERROR,
    ProbeStream,
    StreamResult,
    Target,
)

DEFAULT_MAX_SECONDS = 300.0
PREFLIGHT_GAP = 1.0  # seconds of silence the first request asks for, to see it honoured
END_MARGIN = 0.5  # seconds kept back so the last stream ends before the deadline
#: Once the silent stream died after T s, a keepalive stream has shown it survives when
#: it stays open this many times T (and two intervals past T) into the same gap.
OUTLIVE = 1.5
#: The sim's field for comment frames inside gaps (as `ping_every` is for pings); a sim
#: that does not know it refuses the script, and comments go untested.
COMMENT_FIELD = "comment_every"

Progress = Callable[[str], None]


class ProbeError(Exception):
    """The path cannot be probed: unreachable, not a sim, or the script does not pass."""


def sim_script(gap: float, **extra: object) -> dict[str, object]:
    """A short turn with one scripted silence of `gap` s after event GAP_AFTER."""
    return {"thinking_deltas": 1, "text_deltas": 1, "gaps": [[GAP_AFTER, round(gap, 3)]], **extra}


def keepalive_every(max_seconds: float) -> float:
    """The first keepalive period: short enough for most paths, few frames on long runs."""
    return min(5.0, max(0.5, max_seconds / 60))


async def _preflight(target: Target, progress: Progress) -> bool:
    """One short scripted stream: the URL is a sim and `x-sim-script` reaches it.

    Returns whether the sim can send comment frames."""
    progress(f"probe: POST {target.url}: checking that x-sim-script reaches the sim")
    comments = True
    result = await ProbeStream(target, sim_script(PREFLIGHT_GAP, **{COMMENT_FIELD: 5.0})).run()
    if result.how == HTTP_ERROR and result.status == 400 and COMMENT_FIELD in result.detail:
        comments = False  # an older sim: probe without comments
        result = await ProbeStream(target, sim_script(PREFLIGHT_GAP)).run()
    if result.how == ERROR and result.status is None:
        raise ProbeError(result.detail)  # could not connect, or TLS failed
    if result.how != COMPLETED:
        status = f"HTTP {result.status}: " if result.status else ""
        raise ProbeError(
            f"{target.url} did not stream a simulated turn ({result.how}: {status}"
            f"{result.detail.strip()[:200]}); is it an `sse-relay sim`?"
        )
    if result.longest_pause < PREFLIGHT_GAP * 0.8:  # events' pause: keepalives may fill it
        raise ProbeError(
            f"{target.url} streamed without the scripted {PREFLIGHT_GAP:g} s silence: the "
            "path drops the x-sim-script header, or something buffers the stream"
        )
    return comments


async def _until(
    stream: ProbeStream, task: asyncio.Task[StreamResult], when: float
) -> StreamResult:
    """The stream's result once it ends, or once `when` comes (then it is stopped)."""
    await asyncio.wait({task}, timeout=max(0.0, when - time.monotonic()))
    if not task.done():
        stream.stop()
    return await task


async def _progress_every(
    period: float, streams: dict[str, ProbeStream], progress: Progress
) -> None:
    """A line on stderr every `period` s: which streams are open, and what they got."""
    began = time.monotonic()
    while True:
        await asyncio.sleep(period)
        now = time.monotonic()
        parts = []
        for name, stream in streams.items():
            if not stream.open:
                continue
            if name == "silent":
                parts.append(f"silent stream open, {stream.silence(now):.0f} s without a byte")
            else:
                got = stream.pings if name == "ping" else stream.comments
                parts.append(f"{name} stream open, {name}s so far: {got}")
        if parts:
            progress(f"probe: {now - began:.0f} s: " + "; ".join(parts))


async def _watch(
    target: Target,
    gap: float,
    every: float,
    comments: bool,
    deadline: float,
    progress: Progress,
) -> tuple[StreamResult, StreamResult, StreamResult | None]:
    """The silent, ping and comment streams side by side, in one scripted gap."""
    streams = {
        "silent": ProbeStream(target, sim_script(gap)),
        "ping": ProbeStream(target, sim_script(gap, ping_every=every)),
    }
    if comments:
        streams["comment"] = ProbeStream(target, sim_script(gap, **{COMMENT_FIELD: every}))
    tasks = {name: asyncio.create_task(stream.run()) for name, stream in streams.items()}
    period = max(1.0, min(10.0, gap / 20))
    reporter = asyncio.create_task(_progress_every(period, streams, progress))
    try:
        silent = await _until(streams["silent"], tasks["silent"], deadline)
        outlive = math.inf
        if silent.died:
            kill = silent.silence_at_end
            progress(f"probe: the silent stream died after {kill:.1f} s of silence ({silent.how})")
            outlive = max(OUTLIVE * kill, kill + 2 * every)
        others: dict[str, StreamResult] = {}
        for name in ("ping", "comment"):
            if name not in streams:
                continue
            stream = streams[name]
            when = min(deadline, (stream.gap_began or stream.started) + outlive)
            result = others[name] = await _until(stream, tasks[name], when)
            fate = "died" if result.died else "stayed open"
            arrived = result.pings if name == "ping" else result.comments
            progress(
                f"probe: the {name} stream {fate} {result.gap_open:.1f} s into the gap "
                f"({name}s arrived: {arrived})"
            )
    finally:
        reporter.cancel()
        for task in tasks.values():
            task.cancel()
    return silent, others["ping"], others.get("comment")


async def probe(target: Target, max_seconds: float, progress: Progress) -> ProbeReport:
    """Runs the whole probe within `max_seconds`; raises ProbeError if it cannot."""
    began = time.monotonic()
    deadline = began + max_seconds
    comments = await _preflight(target, progress)
    every = keepalive_every(max_seconds)
    gap = deadline - time.monotonic() - END_MARGIN
    if gap < 2 * PREFLIGHT_GAP:
        raise ProbeError(f"--max-seconds {max_seconds:g} leaves no time for a silent stream")
    what = "pings" + (" or comments" if comments else "")
    progress(
        f"probe: ok; up to {gap:.1f} s of scripted silence on one stream, "
        f"{what} every {every:g} s inside it on the others"
    )
    silent, ping, comment = await _watch(target, gap, every, comments, deadline, progress)
    if silent.died and silent.gap_began is None and silent.silence_at_end < PREFLIGHT_GAP:
        raise ProbeError(f"the silent stream failed at once: {describe(silent)}")
    checks = {"ping": Check("ping", every, ping)}
    if comment is not None:
        checks["comment"] = Check("comment", every, comment)
    else:
        why = f"this sim cannot send comments (its x-sim-script has no {COMMENT_FIELD})"
        checks["comment"] = Check.untested("comment", why)
    kill = silent.silence_at_end if silent.died else None
    for name, check in list(checks.items()):
        # Keepalives sent no more often than the path kills cannot have kept it open:
        # try again with a third of the kill time, if the budget allows.
        redo = kill is not None and check.died and every > 0.75 * kill
        if not redo or kill is None:
            continue
        shorter = math.floor(kill / 3 * 100) / 100 or 0.01
        need = max(OUTLIVE * kill, kill + 2 * shorter) + shorter
        room = deadline - time.monotonic() - END_MARGIN
        if room < need:
            check.note = f"a stream with one every {shorter:g} s did not fit in --max-seconds"
            continue
        progress(f"probe: again with a {name} every {shorter:g} s, as the path kills sooner")
        field = "ping_every" if name == "ping" else COMMENT_FIELD
        stream = ProbeStream(target, sim_script(need + shorter, **{field: shorter}))
        task = asyncio.create_task(stream.run())
        when = min(deadline - END_MARGIN, time.monotonic() + need)
        checks[name] = Check(name, shorter, await _until(stream, task, when))
        checks[name].note = f"sent every {every:g} s, they could not keep a stream open"
    elapsed = time.monotonic() - began
    return ProbeReport(target.url, max_seconds, elapsed, silent, checks["ping"], checks["comment"])


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip().lower(), value.strip()


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 5:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected at least 5 seconds, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sse-relay probe",
        description="Find how long an idle stream survives on a network path: run "
        "`sse-relay sim` behind your load balancer, then probe the balancer's URL from "
        "the client side. Reports the silence after which the path kills a stream, how it "
        "died, whether keepalive frames reach the client, and the --keepalive-interval to "
        "use. Speaks HTTP/1.1; https:// uses the system CA store (or SSL_CERT_FILE).",
    )
    parser.add_argument("url", help="the sim's base URL as clients reach it (or .../v1/messages)")
    parser.add_argument(
        "--max-seconds",
        type=_seconds,
        default=DEFAULT_MAX_SECONDS,
        metavar="S",
        help=f"stop after this long, whatever was found (default {DEFAULT_MAX_SECONDS:g}); "
        "an idle timeout longer than about this is not seen",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument(
        "-H",
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra request header (the balancer's auth, say); repeatable",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`sse-relay probe`: 0 when the probe ran, 1 when the path could not be probed."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        target = Target.from_url(args.url, tuple(args.header))
    except ValueError as exc:
        parser.error(str(exc))

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        report = asyncio.run(probe(target, args.max_seconds, progress))
    except ProbeError as exc:
        print(f"sse-relay probe: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_json(), indent=2) if args.json else report.summary())
    return 0
