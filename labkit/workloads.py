"""Workloads with known answers: the experiments' raw material.

Every task is a plain module-level function, so thread pools, process pools (under fork, spawn
and forkserver) and clusters can all run it, and every task returns an answer a test can check.
They come in the kinds the course compares:

==================  ===========================  =========================================
kind                function                     what the GIL does
==================  ===========================  =========================================
pure-Python CPU     :func:`count_primes`         held throughout: threads take turns
GIL-releasing CPU   :func:`hash_password`        released inside scrypt: threads overlap
numpy               :func:`blur`                 released inside numpy's loops, mostly
I/O wait            :func:`io_wait`,             released while sleeping: everything overlaps
                    :func:`async_io_wait`
==================  ===========================  =========================================

Default sizes take roughly 0.1 to 0.5 s on one core of a current laptop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

# numpy and cryptography are imported inside the functions that use them: a worker process that
# only counts primes starts without them, which matters for spawn, where every worker imports
# labkit afresh.

__all__ = [
    "count_primes",
    "hash_password",
    "blur",
    "make_image",
    "io_wait",
    "async_io_wait",
    "spin",
    "PRIMES_BELOW",
    "DEFAULT_PRIMES_LIMIT",
    "DEFAULT_HASH_COST",
]

#: Known answers for :func:`count_primes` (the prime-counting function).
PRIMES_BELOW = {10: 4, 100: 25, 1_000: 168, 10_000: 1_229, 100_000: 9_592, 200_000: 17_984, 1_000_000: 78_498}

#: ``count_primes(DEFAULT_PRIMES_LIMIT)`` takes about 0.25 s of pure Python.
DEFAULT_PRIMES_LIMIT = 100_000

#: ``hash_password(cost=DEFAULT_HASH_COST)`` is scrypt with n = 2**15: about 0.15 s and 32 MiB.
DEFAULT_HASH_COST = 15


def count_primes(limit: int = DEFAULT_PRIMES_LIMIT) -> int:
    """Count the primes below ``limit`` by trial division, in pure Python.

    Deliberately naive: every step is Python bytecode, so the thread running it holds the GIL
    the whole time. ``count_primes(100_000) == 9592``.
    """
    if not isinstance(limit, int) or limit < 0:
        raise ConfigurationError(f"limit must be a non-negative integer, got {limit!r}")
    count = 0
    for candidate in range(2, limit):
        divisor = 2
        while divisor * divisor <= candidate:
            if candidate % divisor == 0:
                break
            divisor += 1
        else:
            count += 1
    return count


def hash_password(
    password: bytes | str = b"correct horse battery staple",
    salt: bytes = b"labkit-course-salt",
    cost: int = DEFAULT_HASH_COST,
) -> str:
    """Derive a 32-byte scrypt key (hex) from ``password``, as a server does at login.

    Runs in the ``cryptography`` package's native code, which releases the GIL: threads hashing
    at once really use several cores. ``cost`` is log2 of scrypt's n (block size 8, parallelism 1);
    each step up doubles both time and memory (2**15 takes 32 MiB).
    """
    if not isinstance(cost, int) or not 1 <= cost <= 20:
        raise ConfigurationError(f"cost must be an integer from 1 to 20 (log2 of scrypt's n), got {cost!r}")
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    if isinstance(password, str):
        password = password.encode()
    kdf = Scrypt(salt=salt, length=32, n=2**cost, r=8, p=1)
    return kdf.derive(password).hex()


def make_image(height: int = 1024, width: int = 1024, seed: int = 0) -> np.ndarray:
    """A deterministic grey-scale test image (float64, values 0 to 1): smooth waves plus noise."""
    import numpy as np

    if height < 1 or width < 1:
        raise ConfigurationError(f"image size must be positive, got {height}x{width}")
    y, x = np.mgrid[0:height, 0:width]
    waves = 0.5 + 0.25 * np.sin(x / 17.0) + 0.25 * np.cos(y / 23.0)
    noise = np.random.default_rng(seed).random((height, width))
    return 0.8 * waves + 0.2 * noise


def blur(image: np.ndarray, radius: int = 4, out: np.ndarray | None = None) -> np.ndarray:
    """Box-blur a 2-D array: each pixel becomes the mean of its (2r+1)² neighbourhood.

    Edges are handled by clamping (the nearest edge pixel repeats). Computed with cumulative sums,
    so the cost does not grow with ``radius``. Writes into ``out`` when given (it may be a view
    into shared memory) and returns it.

    The sums live in a scratch array that each thread keeps for the next call of the same size,
    so a worker that blurs frame after frame into ``out`` allocates nothing per frame. Allocating
    afresh would cost more than the arithmetic, and unevenly: whether the C allocator hands the
    memory back to the operating system after each frame (and pays page faults to get it back)
    depends on the process's history, so two workers doing the same work could differ two-fold.
    """
    import numpy as np

    if image.ndim != 2:
        raise ConfigurationError(f"blur expects a 2-D array, got shape {image.shape}")
    if radius < 0:
        raise ConfigurationError(f"radius must be non-negative, got {radius}")
    if 0 in image.shape:
        raise ConfigurationError(f"blur got an image of shape {image.shape}, with an empty axis: it needs at least "
                                 "one row and one column (there is no edge pixel to repeat)")
    height, width = image.shape
    size = 2 * radius + 1
    # The summed-area table, with a row and a column of zeros in front: the cumulative sums of an
    # array whose first row and column are zero are the zero-padded sums of the rest of it.
    table = _scratch((height + 2 * radius + 1, width + 2 * radius + 1))
    table[0, :] = 0
    table[:, 0] = 0
    padded = table[1:, 1:]
    padded[radius:radius + height, radius:radius + width] = image
    padded[radius:radius + height, :radius] = padded[radius:radius + height, radius:radius + 1]
    padded[radius:radius + height, radius + width:] = padded[radius:radius + height, radius + width - 1:radius + width]
    padded[:radius, :] = padded[radius:radius + 1, :]
    padded[radius + height:, :] = padded[radius + height - 1:radius + height, :]
    np.cumsum(table, axis=0, out=table)
    np.cumsum(table, axis=1, out=table)
    direct = out is not None and out.dtype == np.float64 and out.shape == image.shape
    result = out if direct and out is not None else np.empty(image.shape)
    np.subtract(table[size:, size:], table[:-size, size:], out=result)
    np.subtract(result, table[size:, :-size], out=result)
    np.add(result, table[:-size, :-size], out=result)
    np.divide(result, size * size, out=result)
    if out is None or direct:
        return result
    out[...] = result
    return out


#: The largest scratch table :func:`blur` keeps between calls (bytes); a larger one is freed after use.
_SCRATCH_KEPT_BYTES = 64 * 2**20
_scratch_of_thread = threading.local()


def _scratch(shape: tuple[int, int]) -> np.ndarray:
    """A float64 array of ``shape`` for this thread's use until its next call (contents undefined)."""
    import numpy as np

    kept = getattr(_scratch_of_thread, "table", None)
    if kept is not None and kept.shape == shape:
        return kept
    table = np.empty(shape)
    _scratch_of_thread.table = table if table.nbytes <= _SCRATCH_KEPT_BYTES else None
    return table


def io_wait(seconds: float = 0.1) -> float:
    """Block the calling thread for ``seconds`` as a slow database or network call would.

    The thread sleeps in the OS and holds no GIL, so many of these overlap on one core.
    Returns ``seconds``.
    """
    time.sleep(seconds)
    return seconds


async def async_io_wait(seconds: float = 0.1) -> float:
    """Wait ``seconds`` without blocking the event loop, as an async database driver does."""
    await asyncio.sleep(seconds)
    return seconds


def spin(seconds: float = 0.1) -> int:
    """Burn CPU in pure Python for ``seconds`` of wall time; return how many rounds ran.

    Unlike :func:`count_primes` its duration is fixed, not its amount of work: useful to hold a
    core busy for a known time.
    """
    end = time.perf_counter() + seconds
    rounds = 0
    while time.perf_counter() < end:
        for _ in range(1000):
            pass
        rounds += 1
    return rounds
