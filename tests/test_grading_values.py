"""Answers become plain values before a check compares them: a student's object never decides."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.grading._values import MAX_DEPTH, plain, plain_dict
from labkit.grading.checks import Fail


class Agreeable:
    """Equal to everything, unequal to nothing: what a student returns to pass without the work."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = object.__hash__


class AgreeableInt(int):
    __eq__ = Agreeable.__eq__
    __ne__ = Agreeable.__ne__
    __hash__ = int.__hash__


class LyingMeta(type):
    """A metaclass that claims its classes equal every type, so `type(x) in (int, ...)` says yes."""

    def __eq__(cls, other):
        return True

    def __hash__(cls):
        return hash(int)


class Disguised(int, metaclass=LyingMeta):
    def __index__(self):
        return 17


def test_plain_values_come_back_unchanged():
    answer = [1, 2.5, "x", b"y", None, True, (3, 4), {"k": [5]}]
    assert plain(answer, "f()") == answer
    assert type(plain((1, 2), "f()")) is tuple


def test_numpy_numbers_become_python_numbers_so_a_right_count_in_int64_passes():
    converted = plain([np.int64(9592), np.float32(0.5), np.bool_(True), np.uint8(3)], "f()")
    assert converted == [9592, 0.5, True, 3]
    assert [type(v) for v in converted] == [int, float, bool, int]


@pytest.mark.parametrize("answer", [
    Agreeable(), AgreeableInt(5), [1, Agreeable()], (Agreeable(),), {"key": Agreeable()},
    {AgreeableInt(1): 1}, Disguised(3), np.array([1, 2]),
], ids=["object", "int-subclass", "in-a-list", "in-a-tuple", "dict-value", "dict-key", "lying-metaclass",
        "array"])
def test_an_object_that_could_decide_a_comparison_is_refused_with_what_to_return(answer):
    with pytest.raises(Fail, match=r"count_report\(10\) returned .* which the check does not compare: return None"):
        plain(answer, "count_report(10)")


def test_subclasses_of_containers_are_refused_since_they_may_override_iteration():
    class Sneaky(list):
        def __iter__(self):
            return iter([9592])

    with pytest.raises(Fail, match="a Sneaky"):
        plain(Sneaky([0]), "f()")


def test_a_self_containing_or_very_deep_answer_is_refused_without_a_recursion_error():
    loop: list = []
    loop.append(loop)
    with pytest.raises(Fail, match=f"nested more than {MAX_DEPTH} deep"):
        plain(loop, "f()")


def test_plain_dict_names_the_shape_wanted():
    with pytest.raises(Fail, match=r"settings\(\) returned list; return a dict of Cluster keyword arguments"):
        plain_dict([], "settings()", shape="of Cluster keyword arguments")
    assert plain_dict({"workers": np.int64(2)}, "settings()", shape="") == {"workers": 2}
