"""The shared journal (`--journal redis://...`): two relay instances and a real
redis-server; a stream cut on one instance is resumed, or cancelled, on the other,
its owner may die or drain, Redis may be down, and what Redis holds is sealed."""

from __future__ import annotations

import re
import signal
import socket
import threading
from collections.abc import Iterator
from typing import cast

import httpx2
import pytest

from relay.journal.sealing import key_of
from tests.clients import KEEPALIVE, STREAM_BODY, script, wait_for
from tests.redisproc import RedisServer, free_port
from tests.relayproc import RelayProcess
from tests.simserver import SimServer
from tests.test_resume import RESUMABLE, PartialStream, direct, resume

GAP = script(gaps=[[3, 1.0]])
LOST = re.compile(rb"event: error\ndata: (\{.*\})\n\n$")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def instance(sim: SimServer, redis_server: RedisServer, *flags: str, **kw: object) -> RelayProcess:
    args = ("--journal", redis_server.url, "--resume-grace", "3", "--resume-retain", "5")
    return RelayProcess(sim.url, *args, *flags, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pair(sim: SimServer, redis_server: RedisServer) -> Iterator[tuple[RelayProcess, RelayProcess]]:
    with instance(sim, redis_server) as first, instance(sim, redis_server) as second:
        yield first, second


def cut_stream(port: int, headers: dict[str, str], size: int = 300) -> tuple[str, bytes]:
    """A resumable stream through `port`, its client gone after `size` bytes: (id, bytes
    it had)."""
    first = PartialStream(port, {**RESUMABLE, **headers})
    first.read_until(size)
    have = bytes(first.body)
    first.cut()
    return first.headers[b"relay-stream-id"].decode(), have


Entry = tuple[bytes, dict[bytes, bytes]]


def journal_entries(redis_server: RedisServer, stream_id: str) -> list[Entry]:
    return cast(list[Entry], redis_server.client().xrange(key_of(stream_id)))


def test_a_stream_cut_on_one_instance_resumes_on_the_other(
    sim: SimServer, pair: tuple[RelayProcess, RelayProcess]
) -> None:
    owner, other = pair
    expected = direct(sim, GAP)
    before = len(sim.requests)
    stream_id, have = cut_stream(owner.port, GAP)
    answer = resume(other.url, stream_id, len(have))
    assert answer.status_code == 200
    assert answer.headers["relay-stream-id"] == stream_id
    assert (have + answer.content).replace(KEEPALIVE, b"") == expected
    assert len(sim.requests) - before == 1
    assert b"from the shared journal" in other.stderr_text


def test_a_resume_on_the_other_instance_keeps_the_stream_past_its_grace(
    sim: SimServer, redis_server: RedisServer
) -> None:
    """The owner learns a client is attached elsewhere, so a stream longer than the
    grace period still ends whole; its keepalives reach that client through Redis."""
    silence = script(gaps=[[3, 3.0]])
    expected = direct(sim, silence)
    with (
        instance(sim, redis_server, "--resume-grace", "2", keepalive=0.2) as owner,
        instance(sim, redis_server) as other,
    ):
        stream_id, have = cut_stream(owner.port, silence)
        answer = resume(other.url, stream_id, len(have))
    assert answer.status_code == 200
    assert KEEPALIVE in answer.content  # written by the owner while the client was elsewhere
    assert (have + answer.content).replace(KEEPALIVE, b"") == expected


def test_the_owner_dying_gives_the_journaled_part_then_the_error_frame(
    sim: SimServer, redis_server: RedisServer, pair: tuple[RelayProcess, RelayProcess]
) -> None:
    silence = script(gaps=[[3, 30]])
    expected = direct(sim, script())
    with instance(sim, redis_server, expect_exit=None) as owner:
        stream_id, have = cut_stream(owner.port, silence)
        # Everything before the silence is in Redis (the owner flushes within 50 ms).
        wait_for(lambda: len(journal_entries(redis_server, stream_id)) >= 2, timeout=5)
        owner.proc.send_signal(signal.SIGKILL)
        owner.proc.wait(10)
    answer = resume(pair[1].url, stream_id, len(have))
    assert answer.status_code == 200
    match = LOST.search(answer.content)
    assert match, answer.content[-300:]
    assert b"running this stream stopped" in match.group(1)
    journaled = have + answer.content[: match.start()]
    assert len(journaled) > len(have) or KEEPALIVE not in have  # nothing skipped
    assert expected.startswith(journaled.replace(KEEPALIVE, b""))


def test_without_the_shared_journal_a_dead_owner_means_404(sim: SimServer) -> None:
    with RelayProcess(sim.url, expect_exit=None) as owner:
        stream_id, _ = cut_stream(owner.port, script(gaps=[[3, 30]]))
        owner.proc.send_signal(signal.SIGKILL)
        owner.proc.wait(10)
    with RelayProcess(sim.url) as other:
        assert resume(other.url, stream_id, 0).status_code == 404


def test_another_caller_and_guessed_ids_get_the_same_404_on_the_other_instance(
    sim: SimServer, pair: tuple[RelayProcess, RelayProcess]
) -> None:
    owner, other = pair
    stream_id, have = cut_stream(owner.port, GAP)
    wrong = resume(other.url, stream_id, len(have), key="sk-intruder")
    guessed = resume(other.url, stream_id[:-1] + ("A" if stream_id[-1] != "A" else "B"), 0)
    unknown = resume(other.url, "x" * 32, 0)
    for answer in (wrong, guessed, unknown):
        assert answer.status_code == 404
        assert answer.json()["error"]["type"] == "not_found_error"
    assert wrong.json() == guessed.json() == unknown.json()


def test_redis_holds_sealed_batches_an_ending_and_a_ttl(
    sim: SimServer, redis_server: RedisServer, pair: tuple[RelayProcess, RelayProcess]
) -> None:
    owner, _ = pair
    many = script(text_deltas=200, thinking_deltas=50)
    with httpx2.Client(timeout=30) as client:
        response = client.post(
            owner.url + "/v1/messages", content=STREAM_BODY, headers={**RESUMABLE, **many}
        )
    stream_id = response.headers["relay-stream-id"]
    key = key_of(stream_id)
    wait_for(lambda: b"e" in journal_entries(redis_server, stream_id)[-1][1], timeout=5)
    entries = journal_entries(redis_server, stream_id)
    events = response.content.count(b"\n\n")
    assert events > 250
    assert len(entries) < events / 10  # batched: never an entry per event
    assert b"h" in entries[0][1] and b"e" in entries[-1][1]
    stored = b"".join(value for _, fields in entries for value in fields.values())
    assert sum(len(v) for _, f in entries[1:-1] for v in f.values()) >= len(response.content)
    for plain in (b"message_stop", b"text_delta", b"event-stream", stream_id.encode()):
        assert plain not in stored
    client_redis = redis_server.client()
    keys = [k.decode() for k in cast(list[bytes], client_redis.keys("*"))]
    assert not any(stream_id in k for k in keys)
    assert 0 < client_redis.ttl(key) <= 5  # --resume-retain
    assert not client_redis.exists(key + ":a")  # ended: no liveness left behind
    # And the other instance serves the finished stream whole.
    assert resume(pair[1].url, stream_id, 0).content == response.content


def test_a_cancel_on_the_other_instance_stops_upstream(
    sim: SimServer, pair: tuple[RelayProcess, RelayProcess]
) -> None:
    owner, other = pair
    closes = len(sim.closes)
    stream_id, _ = cut_stream(owner.port, script(gaps=[[3, 30]]))
    with httpx2.Client(timeout=10) as client:
        gone = client.delete(
            f"{other.url}/relay/v1/streams/{stream_id}", headers={"x-api-key": "sk-owner"}
        )
    assert gone.status_code == 204
    wait_for(lambda: any(c.client_aborted_midstream for c in sim.closes[closes:]), timeout=5)


def test_with_redis_down_streams_relay_and_stay_resumable_on_their_instance(
    sim: SimServer,
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    expected = direct(sim, GAP)
    with RelayProcess(sim.url, "--journal", nowhere) as relay:
        stream_id, have = cut_stream(relay.port, GAP)
        answer = resume(relay.url, stream_id, len(have))
        assert (have + answer.content).replace(KEEPALIVE, b"") == expected
        wait_for(lambda: b"shared journal is unreachable" in relay.stderr_text, timeout=5)
        # A stream this instance does not know: Redis cannot say either, and says so.
        elsewhere = resume(relay.url, "y" * 32, 0)
        assert elsewhere.status_code == 502
        assert "shared journal" in elsewhere.json()["error"]["message"]
        with httpx2.Client(timeout=10) as client:
            metrics = client.get(relay.admin_url + "/metrics").text
    assert relay.stderr_text.count(b"shared journal is unreachable (") == 1  # said once
    assert re.search(r'sse_relay_journal_errors_total\{op="write"\} [1-9]', metrics)


def test_a_drain_with_a_detached_stream_leaves_its_ending_in_redis(
    sim: SimServer, redis_server: RedisServer, pair: tuple[RelayProcess, RelayProcess]
) -> None:
    with instance(sim, redis_server, "--drain-timeout", "0.5") as owner:
        stream_id, have = cut_stream(owner.port, script(gaps=[[3, 30]]))
        owner.proc.send_signal(signal.SIGTERM)
        assert owner.proc.wait(10) == 0
    answer = resume(pair[1].url, stream_id, len(have))
    assert answer.status_code == 200
    match = LOST.search(answer.content)
    assert match, answer.content[-300:]
    assert b"restarting" in match.group(1)


def test_the_newest_resumer_takes_over_across_instances(
    sim: SimServer, pair: tuple[RelayProcess, RelayProcess]
) -> None:
    """A resume on the owner takes the stream from a resumer on the other instance, as
    on one instance: the older one is reset (an error, never a clean end)."""
    owner, other = pair
    stream_id, have = cut_stream(owner.port, script(gaps=[[3, 30]]))
    outcome: list[str] = []

    def older() -> None:
        with (
            httpx2.Client(timeout=30) as client,
            client.stream(
                "GET",
                f"{other.url}/relay/v1/streams/{stream_id}?offset={len(have)}",
                headers={"x-api-key": "sk-owner"},
            ) as response,
        ):
            assert response.status_code == 200
            try:
                for _ in response.iter_raw():
                    pass
                outcome.append("clean end")
            except httpx2.HTTPError as error:
                outcome.append(type(error).__name__)

    served = other.stderr_text.count(b"from the shared journal")
    reader = threading.Thread(target=older)
    reader.start()
    wait_for(lambda: other.stderr_text.count(b"from the shared journal") > served, timeout=5)
    with socket.create_connection(("127.0.0.1", owner.port), timeout=10) as newer:
        newer.sendall(
            f"GET /relay/v1/streams/{stream_id}?offset={len(have)} HTTP/1.1\r\n"
            "host: relay\r\nx-api-key: sk-owner\r\n\r\n".encode()
        )
        assert newer.recv(65536).startswith(b"HTTP/1.1 200")
        reader.join(10)
    assert outcome and outcome[0] != "clean end"
    assert b"taken over by a newer resume" in other.stderr_text


def test_with_the_shared_journal_a_detached_stream_runs_on_through_the_drain(
    sim: SimServer, redis_server: RedisServer, pair: tuple[RelayProcess, RelayProcess]
) -> None:
    """Resumes land on other instances, so the drain lets a detached stream finish (up
    to --drain-timeout); a resume elsewhere gets it whole, and upstream saw one request.
    """
    expected = direct(sim, GAP)
    before = len(sim.requests)
    with instance(sim, redis_server, "--drain-timeout", "10") as owner:
        stream_id, have = cut_stream(owner.port, GAP)
        owner.proc.send_signal(signal.SIGTERM)
        answer = resume(pair[1].url, stream_id, len(have))
        assert owner.proc.wait(10) == 0
    assert answer.status_code == 200
    assert (have + answer.content).replace(KEEPALIVE, b"") == expected
    assert len(sim.requests) - before == 1
