"""run_load: counts, latencies, errors and the per-worker split are right against a known server."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from labkit import AppServer, ConfigurationError
from labkit.cli import main
from labkit.load import ERROR_KINDS, LoadReport, _parse_response, run_load, run_load_async
from labkit.cli._load import parse_duration


@pytest.fixture(scope="module")
def server():
    with AppServer() as running:
        yield running


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed at once: nothing listens there


def test_a_counted_run_answers_every_request_and_credits_the_one_server_pid(server):
    report = run_load(server.url + "/fast", concurrency=4, requests=200)
    assert (report.requests, report.ok, report.failed) == (200, 200, 0)
    assert report.per_pid == {server.pid: 200}
    assert 0 < report.p50_ms <= report.p90_ms <= report.p99_ms <= report.max_ms
    assert report.throughput == pytest.approx(200 / report.duration)


def test_non_2xx_answers_are_errors_of_their_own_kind(server):
    report = run_load(server.url + "/primes?n=abc", concurrency=2, requests=10)
    assert report.errors == {**dict.fromkeys(ERROR_KINDS, 0), "non-2xx": 10}
    assert report.ok == 0 and report.requests == 10
    assert report.per_pid == {server.pid: 10}  # a 400 is still an answer from that worker


def test_a_port_nobody_listens_on_counts_refused_connections():
    report = run_load(f"http://127.0.0.1:{free_port()}/", concurrency=2, requests=6)
    assert report.errors["refused"] == 6 and report.requests == 6 and report.ok == 0


def test_a_request_slower_than_the_timeout_counts_as_a_timeout(server):
    report = run_load(server.url + "/sleep?ms=3000", concurrency=2, requests=2, timeout=0.3)
    assert report.errors["timeout"] == 2


def test_a_timed_run_stops_after_its_duration(server):
    report = run_load(server.url + "/fast", concurrency=2, duration=0.5)
    assert report.ok > 0 and report.failed == 0
    assert 0.4 < report.duration < 5  # ends at the deadline, plus the requests then in flight


def test_the_async_form_leaves_the_callers_loop_free(server):
    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(ticker())
        report = await run_load_async(server.url + "/fast", concurrency=2, duration=0.5)
        beat.cancel()
        return report, ticks

    report, ticks = asyncio.run(scenario())
    assert report.ok > 0
    assert ticks >= 20  # the loop kept running while the load process worked


def test_a_report_round_trips_through_json_and_reads_as_a_summary(server):
    report = run_load(server.url + "/fast", concurrency=2, requests=20)
    assert LoadReport.from_json(report.to_json()) == report
    assert json.loads(report.to_json())["throughput"] == pytest.approx(report.throughput)
    text = report.summary()
    assert "req/s" in text and "p99" in text and f"{server.pid}: 20 (100%)" in text


def test_labkit_load_prints_the_report_as_json(server, capsys):
    assert main(["load", server.url + "/fast", "-c", "2", "-n", "30", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["requests"] == report["ok"] == 30
    assert report["per_pid"] == {str(server.pid): 30}


def test_durations_read_seconds_milliseconds_and_minutes():
    assert [parse_duration(text) for text in ("10s", "500ms", "2m", "1.5", "1h")] == [10, 0.5, 120, 1.5, 3600]
    for wrong in ("", "ten", "-1s", "0s", "5 parsecs"):
        with pytest.raises(ValueError):
            parse_duration(wrong)


def test_responses_are_parsed_with_either_length_or_chunks_and_keep_alive_is_honoured():
    sized = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Worker-Pid: 42\r\n\r\nok\nHTTP/1.1"
    response, used = _parse_response(sized)
    assert (response.status, response.pid, response.keep_alive, used) == (200, 42, True, len(sized) - 8)
    chunked = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nab\r\n0\r\n\r\n"
    response, used = _parse_response(chunked)
    assert (response.status, response.keep_alive, used) == (503, False, len(chunked))
    assert _parse_response(chunked[:-3]) is None
    with pytest.raises(ValueError):
        _parse_response(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_bad_arguments_are_refused_with_what_to_do():
    with pytest.raises(ConfigurationError, match="http://host:port"):
        run_load("https://example.org/")
    with pytest.raises(ConfigurationError, match="never end"):
        run_load("http://127.0.0.1:1/", duration=None)
