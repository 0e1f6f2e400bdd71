"""The workloads return known answers and reject bad sizes."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from labkit import ConfigurationError, async_io_wait, blur, count_primes, hash_password, io_wait, make_image, spin
from labkit.workloads import PRIMES_BELOW


@pytest.mark.parametrize("limit", [10, 100, 1_000, 10_000])
def test_count_primes_matches_the_prime_counting_function(limit):
    assert count_primes(limit) == PRIMES_BELOW[limit]


def test_count_primes_below_two_is_zero():
    assert count_primes(0) == count_primes(2) == 0


def test_count_primes_rejects_negative_limits():
    with pytest.raises(ConfigurationError):
        count_primes(-5)


def test_hash_password_agrees_with_openssl_scrypt():
    expected = hashlib.scrypt(b"pw", salt=b"salt", n=2**10, r=8, p=1, dklen=32).hex()
    assert hash_password(b"pw", b"salt", cost=10) == expected
    assert hash_password("pw", b"salt", cost=10) == expected


def test_hash_password_rejects_an_absurd_cost():
    with pytest.raises(ConfigurationError, match="cost"):
        hash_password(cost=40)


def test_hash_password_runs_in_threads_alongside_python_code():
    # While one thread hashes, another can run Python bytecode: scrypt has released the GIL.
    # Behavioural, not a timing threshold: we only ask that the other thread made progress.
    progress = []
    done = threading.Event()

    def counter():
        while not done.is_set():
            progress.append(1)
            time.sleep(0)

    thread = threading.Thread(target=counter)
    thread.start()
    try:
        hash_password(cost=14)
    finally:
        done.set()
        thread.join()
    assert len(progress) > 10


def test_blur_of_a_constant_image_is_the_same_constant():
    image = np.full((20, 30), 0.25)
    assert np.allclose(blur(image, radius=3), 0.25)


def test_blur_matches_a_naive_neighbourhood_mean():
    image = make_image(12, 9, seed=3)
    radius = 2
    padded = np.pad(image, radius, mode="edge")
    naive = np.empty_like(image)
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            naive[y, x] = padded[y : y + 2 * radius + 1, x : x + 2 * radius + 1].mean()
    assert np.allclose(blur(image, radius), naive)


def test_blur_writes_into_out_when_given():
    image = make_image(8, 8)
    out = np.zeros_like(image)
    assert blur(image, 1, out=out) is out
    assert out.any()


def test_blur_rejects_a_one_dimensional_array():
    with pytest.raises(ConfigurationError, match="2-D"):
        blur(np.zeros(5))


def test_blur_rejects_an_image_with_no_rows_by_name():
    with pytest.raises(ConfigurationError, match=r"shape \(0, 7\), with an empty axis"):
        blur(np.zeros((0, 7)))


@pytest.mark.parametrize("radius", [0, 1, 4])
def test_blur_gives_the_same_answer_whatever_size_came_before_on_this_thread_and_on_others(radius):
    rng = np.random.default_rng(7)
    small, large = rng.integers(0, 256, (9, 13)).astype(np.uint8), rng.random((40, 31))
    first = [blur(small, radius), blur(large, radius)]
    again = [blur(small, radius), blur(large, radius)]  # the scratch table changed size in between
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    with ThreadPoolExecutor(4) as threads:  # each thread sums in a table of its own
        for result in threads.map(lambda image: blur(image, radius), [small, large] * 20):
            assert any(result.shape == a.shape and np.array_equal(result, a) for a in first)
    in_place = large.copy()
    assert blur(in_place, radius, out=in_place) is in_place and np.array_equal(in_place, first[1])
    narrow = np.empty(small.shape, np.float32)
    assert np.array_equal(blur(small, radius, out=narrow), first[0].astype(np.float32))


def test_blur_into_out_takes_no_new_memory_after_its_first_frame():
    image, out = make_image(256, 384, seed=2), np.empty((256, 384))
    blur(image, 4, out=out)
    tracemalloc.start()
    try:
        blur(image, 4, out=out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < image.nbytes / 4  # a temporary of the frame's size would be all of it


def test_make_image_is_deterministic_for_a_seed():
    assert np.array_equal(make_image(16, 16, seed=1), make_image(16, 16, seed=1))
    assert not np.array_equal(make_image(16, 16, seed=1), make_image(16, 16, seed=2))


def test_io_waits_return_their_duration():
    assert io_wait(0.01) == 0.01
    assert asyncio.run(async_io_wait(0.01)) == 0.01


def test_spin_runs_for_its_duration():
    start = time.perf_counter()
    assert spin(0.05) > 0
    assert time.perf_counter() - start >= 0.05
