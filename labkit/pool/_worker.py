"""What runs inside one worker process of a :class:`labkit.pool.WorkerPool`.

A worker is a small loop at the far end of its own pipe: say "ready", then forever receive one
task, run it, send back its outcome. It never decides anything: the parent's dispatcher chooses
what it runs, stops it, and replaces it. The messages, all small pickles:

    parent ──▶ worker   task bytes: cloudpickle of (fn, args, kwargs)      STOP (b""): exit cleanly
    worker ──▶ parent   (READY, pid)                                       once, after start-up
                        (RESULT, cloudpickle of the return value)          the task returned
                        (RESULT_BUFFERS, pickle, [sizes]) + raw buffers    it returned big arrays
                        (RESULT_BYTES, size) + the raw bytes               it returned big bytes
                        (RAISED, exception or None, type name, message, traceback text)
                        (UNPICKLE_FAILED, ...same fields as RAISED...)     the task did not unpickle
                        (INIT_FAILED, ...same fields as RAISED...)         the initializer raised

Big results skip the copies a nested pickle would make. A numpy array (anything that pickles
with protocol 5 buffers) travels as a small pickle plus its buffers out of band; a ``bytes``
result travels as itself. Either way the raw data follows its header on the same socket,
written straight from the result's memory and read by the parent straight into the memory the
result will keep (``OUT_OF_BAND_MIN_BYTES`` says from what size; POSIX only: elsewhere every
result is one pickle).

Everything here is also importable from the parent, so that the pool can send ``run_chunk`` (and
tests can read the constants) by reference.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import cloudpickle

from .._lifeline import watch_parent

READY = "ready"
RESULT = "result"
RAISED = "raised"
UNPICKLE_FAILED = "unpickle-failed"
RESULT_BUFFERS = "result-buffers"
RESULT_BYTES = "result-bytes"

# From what size a buffer of a result travels out of band, raw after its header. Below it, the
# copy into the pickle costs less than the extra system calls of a separate write and read.
OUT_OF_BAND_MIN_BYTES = 1 << 20

#: Whether raw writes and reads on the worker's socket are available (POSIX file descriptors).
OUT_OF_BAND = os.name == "posix" and hasattr(os, "readv")
INIT_FAILED = "init-failed"

#: The message that asks a worker to exit; no task ever pickles to zero bytes.
STOP = b""


class InitPayload(NamedTuple):
    """A pool's initializer on its way to a worker process.

    Attributes:
        function: the initializer, cloudpickled.
        args: its arguments, cloudpickled if ``pickled``; else the objects themselves, which
            multiprocessing hands over at process start (inherited, or pickled while spawning).
        pickled: whether ``args`` are cloudpickle bytes.
    """

    function: bytes
    args: Any
    pickled: bool


def serve(conn: Connection, parent_pid: int, init_payload: InitPayload | None) -> None:
    """The worker process's main function (the ``target`` of its ``multiprocessing.Process``)."""
    # Ctrl-C in a terminal reaches the whole process group. The parent decides what an interrupt
    # means (cancel, stop the pool), so a worker never dies of one in the middle of a task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent is the pool's process, passed explicitly: under forkserver os.getppid() is the
    # fork server, which would outlive a crashed notebook kernel.
    watch_parent(parent_pid)
    try:
        if init_payload is not None:
            try:
                initializer = cloudpickle.loads(init_payload.function)
                initargs = init_payload.args
                if init_payload.pickled:
                    initargs = cloudpickle.loads(initargs)
                initializer(*initargs)
            except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent
                conn.send_bytes(pack_exception(INIT_FAILED, exc))
                return
        conn.send_bytes(pickle.dumps((READY, os.getpid())))
        while True:
            try:
                payload = conn.recv_bytes()
            except EOFError:
                return  # the parent closed its end: nothing more will come
            if payload == STOP:
                return
            header, buffers = run_task_out_of_band(payload)
            conn.send_bytes(header)
            for buffer in buffers:
                write_all(conn.fileno(), buffer)
            del header, buffers
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent went away while we were talking to it
    finally:
        conn.close()


def run_task(payload: bytes) -> bytes:
    """Unpickle a task, run it, and return the message that reports its outcome (all in band)."""
    return run_task_out_of_band(payload, out_of_band=False)[0]


def run_task_out_of_band(payload: bytes, out_of_band: bool = OUT_OF_BAND) -> tuple[bytes, list[memoryview]]:
    """Unpickle a task and run it: the message that reports its outcome, and raw buffers to follow."""
    try:
        fn, args, kwargs = cloudpickle.loads(payload)
    except BaseException as exc:  # noqa: BLE001 - even SystemExit: the parent decides what it means
        return pack_exception(UNPICKLE_FAILED, exc), []
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - SystemExit in a task fails the task, not the worker
        return pack_exception(RAISED, exc, skip_frames=1), []
    del fn, args, kwargs
    try:
        return pack_result(result, out_of_band)
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a __reduce__ fails the task too
        return pack_exception(RAISED, explain_pickling_error(exc, result)), []


def pack_result(result: Any, out_of_band: bool) -> tuple[bytes, list[memoryview]]:
    """The message for a result, and the raw buffers that follow it (none for small results)."""
    if not out_of_band:
        return pickle.dumps((RESULT, cloudpickle.dumps(result))), []
    if type(result) is bytes and len(result) >= OUT_OF_BAND_MIN_BYTES:
        return pickle.dumps((RESULT_BYTES, len(result))), [memoryview(result)]
    buffers: list[memoryview] = []

    def keep_big_ones_apart(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_MIN_BYTES:
            return True  # in band
        buffers.append(raw)
        return False

    stream = cloudpickle.dumps(result, protocol=5, buffer_callback=keep_big_ones_apart)
    if not buffers:
        return pickle.dumps((RESULT, stream)), []
    return pickle.dumps((RESULT_BUFFERS, stream, [b.nbytes for b in buffers])), buffers


def write_all(fd: int, data: memoryview) -> None:
    """Write every byte of ``data`` to ``fd`` (a blocking socket), however many calls it takes."""
    view = data.cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_into(fd: int, target: memoryview) -> None:
    """Fill ``target`` from ``fd`` (a blocking socket) without an intermediate copy."""
    view = target.cast("B")
    while view:
        got = os.readv(fd, [view])
        if got == 0:
            raise EOFError("the worker went away in the middle of a result")
        view = view[got:]


def explain_pickling_error(exc: BaseException, result: Any) -> BaseException:
    """The error to report for a result that could not be pickled, catchable as ``exc`` was.

    A ``TypeError`` or ``pickle.PicklingError`` becomes a :class:`~labkit.pool.TaskSerializationError`
    (both at once) that says what to return instead; any other error stays itself with the same
    advice as a note, so ``except`` clauses written for ``ProcessPoolExecutor`` still match.
    """
    advice = (f"the task returned a {type(result).__name__}, which cannot be sent back to the "
              f"parent ({exc}). Return plain data: numbers, strings, lists, dicts, numpy arrays.")
    if isinstance(exc, (TypeError, pickle.PicklingError)):
        from ._base import TaskSerializationError

        problem = TaskSerializationError(advice)
        problem.__cause__ = exc
        return problem
    if isinstance(exc, Exception) and sys.version_info >= (3, 11):  # add_note is 3.11+; 3.10 sends it bare
        exc.add_note(advice)
    return exc


def pack_exception(tag: str, exc: BaseException, skip_frames: int = 0) -> bytes:
    """The message for an exception: the exception itself if it pickles, and always its text.

    ``skip_frames`` drops this module's own frames from the top of the traceback, so the student
    sees their function first.
    """
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        exc_bytes: bytes | None = cloudpickle.dumps(exc)
    except Exception:  # noqa: BLE001 - an unpicklable exception still travels as text
        exc_bytes = None
    return pickle.dumps((tag, exc_bytes, type(exc).__qualname__, str(exc), text))


def run_chunk(fn: Callable[..., Any], chunk: Sequence[tuple]) -> list[Any]:
    """Run ``fn`` over several argument tuples in one trip to the worker (``map(chunksize=...)``)."""
    return [fn(*args) for args in chunk]
