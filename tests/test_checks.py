"""labkit.check: clear pass lines, explanations instead of bare assertions, loud unknown parts."""

from __future__ import annotations

import asyncio

import pytest

import labkit
from labkit.errors import ConfigurationError
from labkit.grading.checks import CheckFailed, Fail, register


@register("extest.demo")
async def _demo(answer):
    if answer is None:
        raise NotImplementedError("hand the work to a thread")
    if answer != 42:
        raise Fail(f"the answer was {answer}, expected 42")
    return "the answer is right."


def test_a_pass_prints_one_stable_line(capsys):
    asyncio.run(labkit.check("extest.demo", 42))
    assert capsys.readouterr().out == "✔ extest.demo passed: the answer is right.\n"


def test_a_failure_explains_instead_of_a_bare_assertion(capsys):
    with pytest.raises(CheckFailed) as exc:
        asyncio.run(labkit.check("extest.demo", 7))
    assert "the answer was 7, expected 42" in str(exc.value)
    assert isinstance(exc.value, AssertionError) and isinstance(exc.value, labkit.LabkitError)
    assert "does not pass yet" in exc.value._render_traceback_()[0]
    assert capsys.readouterr().out.startswith("✘ extest.demo not yet:")


def test_an_untouched_stub_is_reported_as_not_done_with_its_hint():
    with pytest.raises(CheckFailed, match=r"not done yet.*hint: hand the work to a thread"):
        asyncio.run(labkit.check("extest.demo", None))


def test_a_crash_in_the_students_code_is_named():
    @register("extest.crash")
    async def crash():
        return {}["missing"]

    with pytest.raises(CheckFailed, match="your code raised KeyError"):
        asyncio.run(labkit.check("extest.crash"))


def test_an_unknown_part_says_to_update_labkit():
    with pytest.raises(ConfigurationError, match="no check called 'ex99.nothing'"):
        asyncio.run(labkit.check("ex99.nothing"))


def test_check_functions_must_be_async():
    with pytest.raises(ConfigurationError, match="async"):
        register("extest.sync")(lambda: "no")


def test_exercise_01_rejects_a_plain_function():
    def login(password):
        return password

    with pytest.raises(CheckFailed, match="must be an async function"):
        asyncio.run(labkit.check("ex01.offload_hash", login, cost=8))
