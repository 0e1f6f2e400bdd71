"""An HTTP load generator: many kept-alive connections, a fixed concurrency, a report.

Like ``wrk`` or ``autocannon``: ``concurrency`` connections each send a request, wait for the
answer, and send the next, for ``duration`` seconds or until ``requests`` have been sent::

    caller (a notebook, a script)                  load process: python -m labkit.load
    ─────────────────────────────                  ───────────────────────────────────────
    run_load() / run_load_async() ◀── watched ────── caller gone: exit at once
                                  ◀── one JSON line ─ the LoadReport
                                                    asyncio loop, `concurrency` connections
                                                      conn 1: GET ─▶ answer ─▶ GET ─▶ ...
                                                      conn 2: GET ─▶ answer ─▶ ...   ──▶ server

The generator runs in a process of its own, so it never competes with a notebook kernel's loop
for time (and a blocked kernel cannot make the server look slow). Its client speaks raw
HTTP/1.1 over asyncio protocols: a general-purpose client would spend more time on itself than
the demo server spends per request, and measure mostly the client.

Counting rules: every request ends as exactly one of: a 2xx answer (``ok``), a non-2xx answer,
or a failure (refused, reset, timeout, other). ``throughput`` counts only ``ok`` answers per
second, and latency percentiles are over ``ok`` answers. ``per_pid`` splits every answer by the
server's ``X-Worker-Pid`` header, which shows how a cluster spread the work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from ._format import format_host
from .errors import ConfigurationError, LabkitError

__all__ = ["LoadReport", "LoadError", "run_load", "run_load_async", "ERROR_KINDS"]

#: The ways a request can fail, as keys of :attr:`LoadReport.errors`.
ERROR_KINDS = ("refused", "reset", "timeout", "non-2xx", "other")

# Seconds one request may take before it counts as a timeout. Long enough for a deliberately
# slow endpoint on a loaded machine; short enough that a hung server ends a run quickly.
DEFAULT_TIMEOUT = 10.0

# After a refused connection, a connection waits this long before trying again, so a server
# that is down yields a count of refusals instead of a busy loop burning a core.
REFUSED_PAUSE = 0.01

# Extra seconds the caller waits for the load process beyond duration + timeout: starting
# Python and connecting, on a busy machine.
STARTUP_SLACK = 30.0


class LoadError(LabkitError, RuntimeError):
    """The load process failed or returned nothing usable; the message has its last words."""


@dataclass(frozen=True)
class LoadReport:
    """What a load run saw. Times in seconds, latencies in milliseconds.

    Attributes:
        url: the URL that was requested.
        concurrency: connections kept busy at once.
        requests: requests that ended, in any way (answered or failed).
        ok: answers with a 2xx status.
        duration: seconds from the first request to the last answer.
        p50_ms, p90_ms, p99_ms, max_ms: latency percentiles of the ``ok`` answers.
        errors: failures by kind (see :data:`ERROR_KINDS`); every kind is present.
        per_pid: answers per ``X-Worker-Pid`` (the server process that answered).
    """

    url: str
    concurrency: int
    requests: int
    ok: int
    duration: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    per_pid: dict[int, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Successful answers per second."""
        return self.ok / self.duration if self.duration > 0 else 0.0

    @property
    def failed(self) -> int:
        """Requests that did not get a 2xx answer."""
        return sum(self.errors.values())

    def summary(self) -> str:
        """A few lines for people, like wrk's output."""
        failures = ", ".join(f"{kind} {count}" for kind, count in self.errors.items() if count) or "none"
        total = sum(self.per_pid.values())
        split = ", ".join(
            f"{pid}: {count} ({100 * count / total:.0f}%)" for pid, count in sorted(self.per_pid.items())
        ) if total else "no answers"
        return "\n".join([
            f"{self.url}: {self.concurrency} connections, {self.duration:.2f} s",
            f"  requests   {self.requests} ({self.ok} ok), {self.throughput:.1f} req/s",
            f"  latency    p50 {self.p50_ms:.1f} ms, p90 {self.p90_ms:.1f} ms, "
            f"p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms",
            f"  errors     {failures}",
            f"  per worker {split}",
        ])

    def to_json(self) -> str:
        """The report as one JSON object (with ``throughput`` included)."""
        data = asdict(self)
        data["per_pid"] = {str(pid): count for pid, count in self.per_pid.items()}
        data["throughput"] = self.throughput
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> LoadReport:
        """Rebuild a report from :meth:`to_json` output."""
        data = json.loads(text)
        data.pop("throughput", None)
        data["per_pid"] = {int(pid): count for pid, count in data["per_pid"].items()}
        data["errors"] = {**dict.fromkeys(ERROR_KINDS, 0), **data["errors"]}
        return cls(**data)

    def __str__(self) -> str:
        return self.summary()


# ------------------------------------------------------------------------------ the caller side


def run_load(url: str, concurrency: int = 64, duration: float | None = 10.0, requests: int | None = None,
             timeout: float = DEFAULT_TIMEOUT) -> LoadReport:
    """Load ``url`` from a separate process and return its :class:`LoadReport`; blocks meanwhile.

    Runs for ``duration`` seconds, or until ``requests`` requests have ended, whichever comes
    first (pass ``duration=None`` to run a count to the end). ``timeout`` limits each request.
    In a notebook, prefer ``await run_load_async(...)``, which leaves the kernel responsive.
    """
    command = _command(url, concurrency, duration, requests, timeout)
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as process:
        try:
            out, err = process.communicate(timeout=_wait_limit(duration, requests, timeout))
        except BaseException:  # timeout or Ctrl-C: the load process must not outlive this call
            process.kill()
            process.communicate()
            raise
    return _parse(out, err, process.returncode)


async def run_load_async(url: str, concurrency: int = 64, duration: float | None = 10.0,
                         requests: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> LoadReport:
    """Like :func:`run_load`, but awaits the load process instead of blocking the event loop."""
    command = _command(url, concurrency, duration, requests, timeout)
    process = await asyncio.create_subprocess_exec(*command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), _wait_limit(duration, requests, timeout))
    except BaseException:  # timeout or cancellation: end the load process, then pass it on
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    return _parse(out, err, process.returncode)


def _command(url: str, concurrency: int, duration: float | None, requests: int | None, timeout: float) -> list[str]:
    _validate(url, concurrency, duration, requests, timeout)
    command = [sys.executable, "-m", "labkit.load", url, "--concurrency", str(concurrency),
               "--timeout", str(timeout)]
    if duration is not None:
        command += ["--duration", str(duration)]
    if requests is not None:
        command += ["--requests", str(requests)]
    return command


def _validate(url: str, concurrency: int, duration: float | None, requests: int | None, timeout: float) -> None:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigurationError(f"url must look like http://host:port/path (plain HTTP); got {url!r}")
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be at least 1; got {concurrency}")
    if duration is None and requests is None:
        raise ConfigurationError("give a duration, a request count, or both; with neither, the run would never end")
    if duration is not None and not duration > 0:
        raise ConfigurationError(f"duration must be positive; got {duration}")
    if requests is not None and requests < 1:
        raise ConfigurationError(f"requests must be at least 1; got {requests}")
    if not timeout > 0:
        raise ConfigurationError(f"timeout must be positive; got {timeout}")


def _wait_limit(duration: float | None, requests: int | None, timeout: float) -> float:
    if duration is not None:
        return duration + timeout + STARTUP_SLACK
    return (requests or 1) * timeout + STARTUP_SLACK  # the worst case: every request times out in turn


def _parse(out: bytes, err: bytes, returncode: int | None) -> LoadReport:
    line = out.decode(errors="replace").strip().splitlines()[-1:] or [""]
    try:
        return LoadReport.from_json(line[0])
    except (ValueError, KeyError, TypeError):
        last_words = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise LoadError(f"the load process failed (exit status {returncode}): {last_words[0]}") from None


# ------------------------------------------------------------------------ the load process side


class _Tally:
    def __init__(self, deadline: float | None, requests: int | None) -> None:
        self.deadline = deadline
        self.remaining = requests
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter(dict.fromkeys(ERROR_KINDS, 0))
        self.per_pid: Counter[int] = Counter()
        self.ended = 0
        self.last_end = 0.0

    def take(self) -> bool:
        """Claim the right to send one more request."""
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return False
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
        return True

    def end(self, kind: str | None, latency: float = 0.0) -> None:
        self.ended += 1
        self.last_end = time.perf_counter()
        if kind is None:
            self.latencies.append(latency)
        else:
            self.errors[kind] += 1


class _Response:
    __slots__ = ("status", "pid", "keep_alive")

    def __init__(self, status: int, pid: int | None, keep_alive: bool) -> None:
        self.status, self.pid, self.keep_alive = status, pid, keep_alive


def _parse_response(buffer: bytes | bytearray) -> tuple[_Response, int] | None:
    """Parse one HTTP/1.1 response at the start of ``buffer``: ``(response, bytes used)``.

    Returns ``None`` while the response is incomplete; raises ``ValueError`` on garbage.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    if not version.startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1.x response: {lines[0][:60]!r}")
    status = int(rest[:3])
    length: int | None = None
    chunked = False
    pid = None
    keep_alive = version == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep_alive = value.lower() == b"keep-alive" or (keep_alive and value.lower() != b"close")
        elif name == b"x-worker-pid":
            pid = int(value)
    position = end + 4
    if status in (204, 304) or 100 <= status < 200:
        return _Response(status, pid, keep_alive), position
    if chunked:
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
            position = line_end + 2
            if size == 0:
                trailer_end = buffer.find(b"\r\n", position)  # no trailers expected: the blank line
                if trailer_end < 0:
                    return None
                return _Response(status, pid, keep_alive), trailer_end + 2
            if len(buffer) < position + size + 2:
                return None
            position += size + 2
    if length is None:
        raise ValueError("a response without Content-Length or chunked encoding is not supported")
    if len(buffer) < position + length:
        return None
    return _Response(status, pid, keep_alive), position + length


class _Connection(asyncio.Protocol):
    """One kept-alive client connection: send a request, wait for its whole response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = _parse_response(self.buffer)
        except ValueError as exc:
            waiter.set_exception(exc)
            return
        if parsed is not None:
            response, used = parsed
            del self.buffer[:used]
            waiter.set_result(response)

    def eof_received(self) -> bool:
        self._fail(ConnectionResetError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the connection was closed"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, payload: bytes, timeout: float) -> _Response:
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, self._time_out, waiter)
        assert self.transport is not None, "request() before the connection was made"
        self.transport.write(payload)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _time_out(self, waiter: asyncio.Future) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())


def _classify(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, (ConnectionError, EOFError)):
        return "reset"
    return "other"


async def _client(host: str, port: int, payload: bytes, tally: _Tally, timeout: float) -> None:
    """One connection's life: request after request, reconnecting when the server hangs up."""
    loop = asyncio.get_running_loop()
    connection: _Connection | None = None
    try:
        while tally.take():
            if connection is None or connection.closed:
                try:
                    _, connection = await asyncio.wait_for(loop.create_connection(_Connection, host, port), timeout)
                except (OSError, asyncio.TimeoutError) as exc:
                    connection = None
                    tally.end(_classify(exc))
                    await asyncio.sleep(REFUSED_PAUSE)
                    continue
            assert connection is not None
            if not await _request_once(connection, payload, tally, timeout):
                connection.close()
                connection = None
    finally:
        if connection is not None:
            connection.close()


async def _request_once(connection: _Connection, payload: bytes, tally: _Tally, timeout: float) -> bool:
    """Send one request and record how it ended; return whether the connection may be reused."""
    started = time.perf_counter()
    try:
        response = await connection.request(payload, timeout)
    except (OSError, EOFError, ValueError, asyncio.TimeoutError) as exc:
        tally.end(_classify(exc))
        return False
    if response.pid is not None:
        tally.per_pid[response.pid] += 1
    if 200 <= response.status < 300:
        tally.end(None, time.perf_counter() - started)
    else:
        tally.end("non-2xx")
    return response.keep_alive


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values, in milliseconds (0 when there are none)."""
    if not ordered:
        return 0.0
    rank = max(math.ceil(fraction * len(ordered)) - 1, 0)
    return 1e3 * ordered[rank]


async def _drive(url: str, concurrency: int = 64, duration: float | None = 10.0, requests: int | None = None,
                  timeout: float = DEFAULT_TIMEOUT) -> LoadReport:
    """Drive the load on the running event loop and return the report (the load process's body)."""
    _validate(url, concurrency, duration, requests, timeout)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    payload = (f"GET {path} HTTP/1.1\r\nHost: {format_host(host)}:{port}\r\n"
               "User-Agent: labkit-load\r\nAccept: */*\r\n\r\n").encode()
    started = time.perf_counter()
    tally = _Tally(started + duration if duration is not None else None, requests)
    await asyncio.gather(*(_client(host, port, payload, tally, timeout) for _ in range(concurrency)))
    elapsed = max((tally.last_end or time.perf_counter()) - started, 1e-9)
    ordered = sorted(tally.latencies)
    return LoadReport(
        url=url, concurrency=concurrency, requests=tally.ended, ok=len(ordered), duration=elapsed,
        p50_ms=_percentile(ordered, 0.50), p90_ms=_percentile(ordered, 0.90),
        p99_ms=_percentile(ordered, 0.99), max_ms=1e3 * ordered[-1] if ordered else 0.0,
        errors=dict(tally.errors), per_pid=dict(tally.per_pid),
    )


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.load", description="The load process of run_load.")
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = parser.parse_args(argv)
    from . import _lifeline

    _lifeline.watch_parent()  # the caller died or was interrupted: stop at once
    report = asyncio.run(_drive(args.url, args.concurrency, args.duration, args.requests, args.timeout))
    sys.stdout.write(report.to_json() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
