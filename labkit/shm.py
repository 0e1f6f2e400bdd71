"""Numpy arrays in shared memory: created once, attached by name, always unlinked.

Sending a big array to a worker process normally copies it: pickle it, push it through a pipe,
unpickle it on the other side. A shared-memory segment is one block of RAM mapped into several
processes at once, like a whiteboard in a corridor that everyone can walk up to: the owner puts it
up (:meth:`SharedArray.create`), hands out its room number (the small :attr:`~SharedArray.handle`),
workers walk over and write on it (:meth:`SharedArray.attach`), and the owner takes it down when
done (``close()``, which unlinks). This is Python's answer to Node's ``SharedArrayBuffer``.

    owner process                       /dev/shm/labkit_4242_9f3c1a2b            worker process
    SharedArray.create((1000, 1000))─▶ ┌──────────────────────────────┐ ◀─SharedArray.attach(handle)
      .array ─── numpy view ────────▶ │ 8,000,000 bytes, one copy    │ ◀── numpy view ─── .array
      .handle ── (name, shape, dtype) ─────── pickled, ~100 bytes ─────────────────────────▶
      close(): unmap, unlink the name  └──────────────────────────────┘      close(): unmap only

Nothing synchronises the writers: give each worker its own rows, or guard shared cells with a
``multiprocessing.Lock`` (lost updates otherwise: lab 05 shows them).

Who cleans up. Only the owner unlinks, exactly once: on ``close()`` by default, or when the owner
object is garbage-collected or the interpreter exits. Attaching never unlinks. Python's own
``SharedMemory`` also registers every segment it *attaches* with multiprocessing's resource tracker
before 3.13 (CPython gh-82300), so an unrelated process that attached and exited would destroy the
segment under its owner and print "leaked shared_memory objects" warnings; and unregistering
after attaching is no cure, because children of one pool share one tracker that keeps a set of
names, not a count. So labkit opens and maps POSIX segments itself and never involves the tracker
(the equivalent of 3.13's ``track=False``, for owners too). That also means no tracker process is
started behind a notebook's back. What the tracker would have done when an owner is killed with
SIGKILL, labkit does by itself: every segment name carries the creator's pid and, on Linux, the
identity of the PID namespace that pid belongs to (``labkit_<pid>_<namespace>_<random>``), so a
segment whose creator is gone is known to be garbage. Each :meth:`SharedArray.create` sweeps away
the segments of dead creators of its own namespace first, and :func:`remove_leftovers` does the
same on request. A pid alone would not do: two containers (or two graders' sandboxes) sharing one
``/dev/shm`` each have their own pid 42, and a sweep that trusted the pid would unlink a live
neighbour's array. Segments of other namespaces are never swept: their creators cannot be seen.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import secrets
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from numpy.typing import ArrayLike, DTypeLike

from .errors import ConfigurationError, LabkitError

__all__ = [
    "SharedArray",
    "SharedArrayHandle",
    "SharedMemoryGoneError",
    "SharedArrayInUseError",
    "SharedArrayClosedError",
    "NotOwnerError",
    "leftover_segments",
    "remove_leftovers",
]

# Every segment labkit creates is named labkit_<creator pid>_<namespace>_<8 random hex digits>.
# The pid makes leftovers recognisable after a crash; the namespace (the inode number of
# /proc/self/ns/pid, in hex) says in which PID namespace that pid means something; 32 random bits
# make a clash between two arrays of one process a one-in-four-billion event (and a clash is
# retried). Where there is no /proc (macOS caps names at 31 bytes including the leading slash),
# the namespace part is left out: labkit_<pid>_<random>, 24 bytes at most. Names without a
# namespace (also those of older labkit versions) are only removed when asked, never swept.
NAME_PREFIX = "labkit_"
_NAME_PATTERN = re.compile(rf"^{NAME_PREFIX}(\d+)_[0-9a-f]+$")
_NAMESPACED_PATTERN = re.compile(rf"^{NAME_PREFIX}(\d+)_([0-9a-f]+)_[0-9a-f]+$")
_NAME_ATTEMPTS = 8

# Where Linux shows POSIX shared memory as files.
SHM_DIR = Path("/dev/shm")


class SharedMemoryGoneError(LabkitError, FileNotFoundError):
    """The segment to attach does not exist (any more): its owner probably closed it."""


class SharedArrayInUseError(LabkitError, BufferError):
    """``close()`` found numpy arrays that still look into the segment; the message says how to let go."""


class SharedArrayClosedError(LabkitError, ValueError):
    """The SharedArray was closed; its memory is no longer mapped in this process."""


class NotOwnerError(LabkitError, PermissionError):
    """Only the process that created a segment may unlink it; attachers just close."""


@dataclass(frozen=True)
class SharedArrayHandle:
    """Everything another process needs to attach: the segment's name, the shape and the dtype.

    Small and picklable: send it to workers as an argument, and call
    :meth:`SharedArray.attach` there. (A :class:`SharedArray` passed as an argument pickles as its
    handle and attaches by itself on arrival.)
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        """Size of the array in bytes."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


class SharedArray:
    """A numpy array whose memory is a shared-memory segment that other processes can attach.

    Create one with :meth:`create` or :meth:`from_array` (this process owns it), or attach to one
    with :meth:`attach` (typically in a worker). Use ``.array`` like any numpy array; writes are
    seen at once by every process attached. Close it when done, best with ``with``::

        with SharedArray.from_array(image) as shared:           # copies once
            list(pool.map(blur_rows, [shared] * 4, range(4)))   # workers attach, no copies
            result = shared.array.copy()                        # keep what you need
        # here the segment is gone from /dev/shm
    """

    def __init__(self, segment, handle: SharedArrayHandle, *, owner: bool, unlink_on_close: bool) -> None:
        """Internal: use :meth:`create`, :meth:`from_array` or :meth:`attach`."""
        self._segment = segment
        self._handle = handle
        self._owner_pid = os.getpid() if owner else None
        self._unlink_on_close = unlink_on_close
        # frombuffer, not np.ndarray(buffer=...): only frombuffer makes numpy hold the buffer, so
        # that unmapping under a live view fails with BufferError instead of a segfault later.
        count = math.prod(handle.shape)
        flat = np.frombuffer(segment.buf, dtype=np.dtype(handle.dtype), count=count)
        self._array: np.ndarray | None = flat.reshape(handle.shape)
        self._closing = False
        self._closed = False
        self._unlinked = False
        self._finalizer = None
        if self._owner_pid is not None and unlink_on_close:  # that is, owner
            # An owner dropped without close() (a notebook cell re-run, an exception) still frees
            # the segment when collected, and at interpreter exit at the latest.
            self._finalizer = weakref.finalize(self, _release, segment, handle.name, self._owner_pid)

    # ----------------------------------------------------------------------------------------
    # making one

    @classmethod
    def create(cls, shape: int | tuple[int, ...], dtype: DTypeLike = np.float64, *,
               unlink_on_close: bool = True) -> SharedArray:
        """A new zero-filled array in a new segment, owned by this process.

        Args:
            shape: an int or a tuple of ints, as for ``numpy.zeros``.
            dtype: any numpy dtype except object and structured ones.
            unlink_on_close: remove the segment's name when the owner closes (the default). With
                ``False`` the segment outlives ``close()`` until :meth:`unlink`.
        """
        shape, dtype = _check_shape(shape), _check_dtype(dtype)
        handle_nbytes = math.prod(shape) * dtype.itemsize
        namespace = _pid_namespace()
        if namespace is not None:
            _sweep(namespace)
        for _ in range(_NAME_ATTEMPTS):
            where = f"{namespace}_" if namespace is not None else ""
            name = f"{NAME_PREFIX}{os.getpid()}_{where}{secrets.token_hex(4)}"
            try:
                segment = _open_segment(name, create=True, size=max(handle_nbytes, 1))
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - eight clashes of 32 random bits
            raise FileExistsError("could not find a free shared-memory name")
        return cls(segment, SharedArrayHandle(name, shape, dtype.str), owner=True,
                   unlink_on_close=unlink_on_close)

    @classmethod
    def from_array(cls, arr: ArrayLike, *, unlink_on_close: bool = True) -> SharedArray:
        """A new shared array holding a copy of ``arr`` (the one copy you pay for)."""
        source = np.asarray(arr)
        shared = cls.create(source.shape, source.dtype, unlink_on_close=unlink_on_close)
        try:
            shared.array[...] = source
        except BaseException:
            shared.close()
            raise
        return shared

    @classmethod
    def attach(cls, handle: SharedArrayHandle) -> SharedArray:
        """Map an existing segment into this process. Attaching never unlinks it.

        Raises :class:`SharedMemoryGoneError` if the segment no longer exists.
        """
        if not isinstance(handle, SharedArrayHandle):
            raise ConfigurationError(
                f"attach() takes a SharedArrayHandle (shared.handle), got {type(handle).__name__}"
            )
        try:
            segment = _open_segment(handle.name, create=False)
        except FileNotFoundError:
            raise SharedMemoryGoneError(
                f"no shared-memory segment named {handle.name!r}: its owner has probably closed "
                "(and so unlinked) it already. Keep the owner's SharedArray open until every "
                "worker is done with it, e.g. close it after pool.map(...) has returned."
            ) from None
        if segment.size < handle.nbytes:
            segment.close()
            raise ConfigurationError(
                f"segment {handle.name!r} holds {segment.size} bytes but the handle describes "
                f"{handle.nbytes}: the handle does not belong to this segment"
            )
        return cls(segment, handle, owner=False, unlink_on_close=False)

    # ----------------------------------------------------------------------------------------
    # using it

    @property
    def array(self) -> np.ndarray:
        """The numpy view of the shared memory. Writes are visible to every attached process."""
        if self._closing or self._array is None:  # close() sets both
            raise SharedArrayClosedError(f"SharedArray {self.name!r} is closed; attach again to use it")
        return self._array

    @property
    def handle(self) -> SharedArrayHandle:
        """What a worker needs to attach: name, shape, dtype (small and picklable)."""
        return self._handle

    @property
    def name(self) -> str:
        """The segment's name (``labkit_<pid>_<random>``; on Linux, a file in /dev/shm)."""
        return self._handle.name

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return self._handle.shape

    @property
    def dtype(self) -> np.dtype:
        """The array's dtype."""
        return np.dtype(self._handle.dtype)

    @property
    def nbytes(self) -> int:
        """The array's size in bytes."""
        return self._handle.nbytes

    @property
    def owner(self) -> bool:
        """Whether this object created the segment (in this process) and so unlinks it."""
        return self._owner_pid == os.getpid()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has completed."""
        return self._closed

    # ----------------------------------------------------------------------------------------
    # letting go

    def close(self) -> None:
        """Unmap the memory from this process; the owner also unlinks (unless told otherwise).

        Calling it again does nothing. If numpy arrays taken from ``.array`` still exist, the
        memory cannot be unmapped yet: :class:`SharedArrayInUseError` says so (the owner has
        unlinked the name already), and ``close()`` can be called again once they are gone.
        """
        if self._closed:
            return
        self._closing = True
        self._array = None
        if self.owner and self._unlink_on_close:
            self.unlink()
        try:
            self._segment.close()
        except BufferError:
            raise SharedArrayInUseError(
                f"cannot unmap SharedArray {self.name!r} yet: numpy arrays still look into it (the "
                ".array you took, or slices and views of it). Delete them (`del arr`) or keep "
                "copies instead (`arr.copy()`), then call close() again. In Jupyter, a cell that "
                "displayed the array also keeps it in Out[...] and _ (`%reset -f out` drops those)."
                + (" The name is already unlinked: nothing is left in /dev/shm once they are gone."
                   if self._unlinked else "")
            ) from None
        self._closed = True
        if self._finalizer is not None:
            self._finalizer.detach()

    def unlink(self) -> None:
        """Remove the segment's name, so that no one else can attach; only the owner may.

        Processes already attached keep their mapping until they close. Calling it again does
        nothing; a name someone else already removed counts as removed.
        """
        if not self.owner:
            raise NotOwnerError(
                f"only the process that created SharedArray {self.name!r} unlinks it; an attached "
                "copy just calls close()"
            )
        if self._unlinked:
            return
        self._unlinked = True
        try:
            self._segment.unlink()
        except FileNotFoundError:
            pass  # removed already (remove_leftovers, or by hand): the goal is met

    def __enter__(self) -> SharedArray:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __reduce__(self):
        # Pickling sends the handle; unpickling attaches. So a SharedArray can be passed straight
        # to pool.submit / pool.map, and the worker gets its own attachment, not a copy.
        if self._closing:
            raise SharedArrayClosedError(f"cannot send closed SharedArray {self.name!r} to another process")
        return (_attach, (self._handle,))

    def __repr__(self) -> str:
        role = "owner" if self.owner else "attached"
        state = "closed" if self._closed else "open"
        return f"<SharedArray {self.name} shape={self.shape} dtype={self.dtype} {role} {state}>"


def _attach(handle: SharedArrayHandle) -> SharedArray:
    """Unpickling a SharedArray: attach to its segment (see ``SharedArray.__reduce__``).

    A module-level function, so that every pickler sends it by name. ``SharedArray.attach`` itself
    is a bound classmethod, which cloudpickle (the pool's pickler) cannot find by name and would
    send by value, code and all: 2 kB per argument instead of the handle's hundred-odd bytes.
    """
    return SharedArray.attach(handle)


# --------------------------------------------------------------------------------------------
# leftovers


def _pid_namespace() -> str | None:
    """This process's PID namespace as a short hex id, or ``None`` where Linux namespaces are not seen."""
    try:
        return format(os.stat("/proc/self/ns/pid").st_ino, "x")
    except OSError:
        return None


def _dead_creators(namespace: str | None, *, unmarked: bool) -> list[str]:
    """Segments of ``namespace`` whose creator is gone; with ``unmarked``, also names without one."""
    if not sys.platform.startswith("linux") or not SHM_DIR.is_dir():
        return []
    found = []
    try:
        entries = [entry.name for entry in SHM_DIR.iterdir()]
    except OSError:
        return []
    for name in entries:
        match = _NAMESPACED_PATTERN.match(name)
        if match is not None:
            pid, where = int(match[1]), match[2]
            if where == namespace and not psutil.pid_exists(pid):
                found.append(name)
        elif unmarked and (match := _NAME_PATTERN.match(name)) and not psutil.pid_exists(int(match[1])):
            found.append(name)
    return sorted(found)


def _sweep(namespace: str) -> None:
    """Unlink the segments of dead creators of ``namespace`` (before a new one is made)."""
    for name in _dead_creators(namespace, unmarked=False):
        try:
            (SHM_DIR / name).unlink()
        except OSError:
            continue  # gone meanwhile, or not ours to remove


def leftover_segments() -> list[str]:
    """Names of segments labkit created whose creating process no longer exists.

    They are what a killed notebook kernel or worker left in ``/dev/shm``; they use RAM until
    removed (:func:`remove_leftovers`, which every :meth:`SharedArray.create` also does for its
    own PID namespace) or until the machine restarts. Only segments whose name carries this
    process's PID namespace, or no namespace at all (older names), are judged: a creator in
    another container or sandbox cannot be seen, so its segments are never listed. A segment
    whose creator's pid has been reused by an unrelated process is not listed (it looks alive):
    harmless, just conservative. Linux only; on other systems (no ``/dev/shm`` to look in) this
    returns ``[]``.
    """
    return _dead_creators(_pid_namespace(), unmarked=True)


def remove_leftovers() -> list[str]:
    """Unlink every segment :func:`leftover_segments` lists; return the names removed."""
    removed = []
    for name in leftover_segments():
        try:
            (SHM_DIR / name).unlink()
        except FileNotFoundError:
            continue  # someone else cleaned it meanwhile
        removed.append(name)
    return removed


# --------------------------------------------------------------------------------------------
# segments


def _check_shape(shape) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise ConfigurationError(f"shape must be a non-negative int or a tuple of them, got {shape!r}")
    return tuple(int(d) for d in dims)


def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise ConfigurationError(
            f"dtype {dt} holds Python objects, which are pointers into one process's memory and "
            "mean nothing in another: use numbers, bools or fixed-size strings"
        )
    if dt.fields is not None:
        raise ConfigurationError(f"structured dtype {dt} is not supported; use one SharedArray per field")
    return dt


def _open_segment(name: str, *, create: bool, size: int = 0):
    if os.name == "posix":
        return _PosixSegment(name, create=create, size=size)
    return _WindowsSegment(name, create=create, size=size)  # pragma: no cover - not tested on Windows


class _PosixSegment:
    """A POSIX shared-memory object, mapped; the resource tracker never hears of it."""

    def __init__(self, name: str, *, create: bool, size: int) -> None:
        import _posixshmem  # what multiprocessing.shared_memory itself uses, on every POSIX system

        path = "/" + name
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = _posixshmem.shm_open(path, flags, mode=0o600)
        try:
            if create:
                os.ftruncate(fd, size)  # new pages read as zeros
            self.size = os.fstat(fd).st_size
            if self.size == 0:
                raise SharedMemoryGoneError(f"shared-memory segment {name!r} is empty (still being created?)")
            self._mmap: mmap.mmap | None = mmap.mmap(fd, self.size)
        except BaseException:
            if create:
                _posixshmem.shm_unlink(path)
            raise
        finally:
            os.close(fd)  # the mapping stays valid without the descriptor
        self.name = name
        self.buf: memoryview | None = memoryview(self._mmap)

    def close(self) -> None:
        """Unmap; raises BufferError (and changes nothing) while numpy views exist."""
        if self.buf is not None:
            self.buf.release()
            self.buf = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def unlink(self) -> None:
        import _posixshmem

        _posixshmem.shm_unlink("/" + self.name)


class _WindowsSegment:  # pragma: no cover - Windows frees a segment when its last handle closes
    """Windows named shared memory through the standard library (no resource tracker there)."""

    def __init__(self, name: str, *, create: bool, size: int) -> None:
        from multiprocessing.shared_memory import SharedMemory

        self._shm = SharedMemory(name=name, create=create, size=size)
        self.name, self.size, self.buf = name, self._shm.size, self._shm.buf

    def close(self) -> None:
        self.buf = None
        self._shm.close()

    def unlink(self) -> None:
        self._shm.unlink()


def _release(segment, name: str, owner_pid: int) -> None:
    """Finalizer of an owner collected (or still alive at exit) without close()."""
    if os.getpid() != owner_pid:
        return  # a forked child's copy of the owner: the segment is not ours to remove
    try:
        segment.unlink()
    except FileNotFoundError:
        pass  # removed already
    try:
        segment.close()
    except BufferError:
        pass  # views still exist: the mapping goes when they do; the name is gone already
