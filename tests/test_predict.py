"""Predictions: recorded before the experiment, shown beside the result after it, readable by a check."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import labkit
from labkit import ConfigurationError
from labkit.predict import Prediction, PredictionBook, Reveal


@pytest.fixture
def book():
    return PredictionBook()


# --------------------------------------------------------------------------------------------
# the public name


def test_labkit_predict_is_the_kernels_book_and_the_module_stays_importable():
    assert isinstance(labkit.predict, PredictionBook)
    assert sys.modules["labkit.predict"].predict is labkit.predict
    assert "predict" in labkit.__all__


# --------------------------------------------------------------------------------------------
# recording


def test_a_number_is_recorded_as_a_plain_value_and_printed_back(book, capsys):
    book("lab02.cpu_speedup", np.float64(1.8), unit="x")
    assert capsys.readouterr().out == "✎ lab02.cpu_speedup: you predict x1.8. Now run the experiment.\n"
    recorded = book.recorded("lab02.cpu_speedup")
    assert recorded == Prediction("lab02.cpu_speedup", 1.8, None, "x")
    assert type(recorded.value) is float and recorded.kind == "number" and recorded.made


def test_an_integer_stays_an_integer(book):
    book("lab03.failed", np.int64(4))
    assert type(book.recorded("lab03.failed").value) is int


def test_a_range_is_recorded_as_a_tuple_of_floats(book, capsys):
    book("lab02.cpu_speedup", [1.5, 2], unit="x")
    recorded = book.recorded("lab02.cpu_speedup")
    assert recorded.value == (1.5, 2.0) and type(recorded.value) is tuple and recorded.kind == "range"
    assert "between x1.5 and x2" in capsys.readouterr().out


def test_a_choice_is_recorded_with_its_choices(book, capsys):
    book("lab01.overlap", "no", choices=["yes", "no"])
    recorded = book.recorded("lab01.overlap")
    assert recorded.value == "no" and recorded.choices == ("yes", "no") and recorded.kind == "choice"
    assert '"no"' in capsys.readouterr().out


def test_the_placeholder_none_records_no_guess_and_says_how_to_make_one(book, capsys):
    book("lab01.overlap", None, choices=("yes", "no"))
    out = capsys.readouterr().out
    assert book.recorded("lab01.overlap").made is False
    assert "no guess yet" in out and 'one of "yes" or "no"' in out and "None" in out


def test_the_output_of_a_predict_cell_is_deterministic(book, capsys):
    for _ in range(2):
        book("lab01.thousand_waits", None, unit="s")
    first, second = capsys.readouterr().out.splitlines()
    assert first == second


def test_predicting_again_replaces_the_guess(book):
    book("lab00.cores", 4)
    book("lab00.cores", 8)
    assert book.recorded("lab00.cores").value == 8


def test_a_prediction_written_after_its_reveal_is_marked_late(book, capsys):
    book("lab00.cores", None)
    book.reveal("lab00.cores", 2)
    book("lab00.cores", 2)
    assert book.recorded("lab00.cores").late is True
    assert "hindsight" in capsys.readouterr().out
    assert "after the result was shown" in book.judge("lab00.cores", 2).text


def test_a_fresh_book_knows_nothing(book):
    assert book.recorded("lab02.cpu_speedup") is None
    assert "0 recorded" in repr(book)


# --------------------------------------------------------------------------------------------
# bad input: a clear error that names the fix


@pytest.mark.parametrize("key", ["", "lab 02", "lab02.", ".x", 17, None, "lab02.cpu-speedup!"])
def test_a_malformed_key_is_refused(book, key):
    with pytest.raises(ConfigurationError, match="words joined by dots, such as 'lab02.cpu_speedup'"):
        book(key, 1)


@pytest.mark.parametrize("value, fix", [
    (True, "is not a number"),
    (float("nan"), "finite number"),
    (float("inf"), "finite number"),
    ((2, 1), "the smaller first"),
    ((1, 2, 3), "two numbers"),
    (("a", "b"), "two numbers"),
    ("fast", "not words"),
    ({"x": 1}, "a number, a range"),
])
def test_a_value_of_the_wrong_kind_is_refused_with_the_fix(book, value, fix):
    with pytest.raises(ConfigurationError, match=fix):
        book("lab02.cpu_speedup", value)
    assert book.recorded("lab02.cpu_speedup") is None


def test_a_choice_that_is_not_offered_is_refused_naming_the_choices(book):
    with pytest.raises(ConfigurationError, match='one of "yes" or "no"; got \'maybe\''):
        book("lab01.overlap", "maybe", choices=("yes", "no"))
    with pytest.raises(ConfigurationError, match="one of"):
        book("lab01.overlap", 1, choices=("yes", "no"))


@pytest.mark.parametrize("choices", ["yes/no", ("yes",), ("yes", "yes"), ("yes", 2), ("yes", "")])
def test_malformed_choices_are_refused(book, choices):
    with pytest.raises(ConfigurationError, match="choices must be"):
        book("lab01.overlap", None, choices=choices)


def test_a_measured_value_of_the_wrong_kind_is_refused(book):
    book("lab02.cpu_speedup", 1.8, unit="x")
    with pytest.raises(ConfigurationError, match="must be a number"):
        book.reveal("lab02.cpu_speedup", "fast")
    book("lab01.overlap", "no", choices=("yes", "no"))
    with pytest.raises(ConfigurationError, match="must be one of"):
        book.reveal("lab01.overlap", "maybe")


# --------------------------------------------------------------------------------------------
# the reveal


@pytest.mark.parametrize("guess, measured, verdict, words", [
    (1.8, 1.95, "spot on", "Spot on."),
    (1.8, 2.6, "close", "44% higher than your guess"),
    (2, 1.6, "close", "20% lower than your guess"),
    (1000, 1.02, "too high", "980 times too high"),
    (1, 10, "too low", "10 times too low"),
    (0, 4, "too low", "higher than your guess"),
    (0, 0, "spot on", "Spot on."),
])
def test_a_number_is_shown_beside_the_measurement_with_a_verdict(book, capsys, guess, measured, verdict, words):
    book("lab.x", guess, unit="s")
    book.reveal("lab.x", measured)
    out = capsys.readouterr().out.splitlines()[-1]
    assert out.startswith(f"lab.x: you predicted {guess:,} s. Measured: ")
    assert words in out
    assert book.judge("lab.x", measured).verdict == verdict
    assert book.judge("lab.x", measured).right is None  # a bare number is not graded right or wrong


def test_the_reveal_reads_like_the_labs_write_speedups(book, capsys):
    book("lab02.cpu_speedup", 1.8, unit="x")
    book.reveal("lab02.cpu_speedup", np.float64(1.95))
    assert capsys.readouterr().out.splitlines()[-1] == (
        "lab02.cpu_speedup: you predicted x1.8. Measured: x1.95. Spot on.")


@pytest.mark.parametrize("measured, verdict, right",
                         [(1.7, "inside", True), (1.2, "below", False), (2.5, "above", False)])
def test_a_range_is_judged_inside_or_outside(book, measured, verdict, right):
    book("lab02.cpu_speedup", (1.5, 2.0), unit="x")
    judged = book.judge("lab02.cpu_speedup", measured)
    assert (judged.verdict, judged.right) == (verdict, right)


def test_a_choice_is_right_when_it_is_the_answer_or_one_of_several(book):
    book("lab02.fair_mode", "round-robin", choices=("os", "reuseport", "round-robin"))
    assert book.judge("lab02.fair_mode", "round-robin").right is True
    assert book.judge("lab02.fair_mode", "os").right is False
    both = book.judge("lab02.fair_mode", ["os", "round-robin"])
    assert both.right is True and 'The answer: "os" or "round-robin".' in both.text
    assert book.judge("lab02.fair_mode", []).right is False


def test_a_wrong_choice_is_met_kindly(book):
    book("lab01.overlap", "yes", choices=("yes", "no"))
    text = book.judge("lab01.overlap", "no").text
    assert text.startswith('lab01.overlap: you predicted "yes". The answer: "no".') and "read on" in text


def test_the_reveal_without_a_guess_still_shows_the_result_kindly(book, capsys):
    book("lab01.thousand_waits", None, unit="s")
    book.reveal("lab01.thousand_waits", 1.0213)
    out = capsys.readouterr().out.splitlines()[-1]
    assert out.startswith("lab01.thousand_waits: no prediction. Measured: 1.02 s.")
    assert "guess first" in out
    assert book.judge("lab01.thousand_waits", 1.0).verdict == "not predicted"


def test_the_reveal_of_a_prediction_never_recorded_says_which_cell_to_run(book, capsys):
    book.reveal("lab02.cpu_speedup", 1.95)
    out = capsys.readouterr().out
    assert "no prediction was recorded in this kernel" in out and "Measured: 1.95." in out
    assert book.judge("lab02.cpu_speedup", 1.95).verdict == "not recorded"


def test_nothing_measured_is_said_plainly(book):
    book("lab06.pinned_speedup", 1.0, unit="x")
    judged = book.judge("lab06.pinned_speedup", None)
    assert judged.verdict == "not measured" and "Nothing was measured on this machine" in judged.text


def test_judge_prints_nothing_and_returns_a_record(book, capsys):
    book("lab02.cpu_speedup", 1.8, unit="x")
    capsys.readouterr()
    judged = book.judge("lab02.cpu_speedup", 1.95)
    assert capsys.readouterr().out == ""
    assert isinstance(judged, Reveal) and str(judged) == judged.text and judged.measured == 1.95


def test_reveal_texts_never_claim_an_experiment_failed():
    # labkit.record refuses a saved run whose outputs say an effect "could not show".
    from labkit.record import COULD_NOT_SHOW

    book = PredictionBook()
    texts = []
    for guess in (None, 1.0, (1.0, 2.0)):
        book("lab.x", guess)
        texts += [book.judge("lab.x", m).text for m in (None, 0.5, 1.5, 3.0)]
    assert not [t for t in texts for phrase in COULD_NOT_SHOW if phrase in t]


# --------------------------------------------------------------------------------------------
# trend: two measurements, one word


@pytest.mark.parametrize("before, after, word", [(100, 130, "higher"), (100, 70, "lower"), (100, 110, "about the same"),
                                                 (0, 0, "about the same")])
def test_trend_turns_two_measurements_into_a_choice(before, after, word):
    assert PredictionBook.trend(before, after) == word


def test_trend_wants_numbers():
    with pytest.raises(ConfigurationError, match="two numbers"):
        PredictionBook.trend("a", 1)


# --------------------------------------------------------------------------------------------
# what an exercise check can read


def a_check_of_a_graded_prediction(book, key, measured):
    """What an exercise check would do: read the recorded guess, and judge it only if that is fair."""
    prediction = book.recorded(key)
    if prediction is None or not prediction.made:
        return False, "write your prediction in its cell (replace None) and run it before the experiment"
    if prediction.late:
        return False, "the prediction was written after the result was shown"
    judged = book.judge(key, measured)
    return bool(judged.right), judged.text


def test_a_check_can_read_and_judge_a_recorded_range(book):
    book("ex02.throughput_gain", (1.5, 2.2), unit="x")
    assert a_check_of_a_graded_prediction(book, "ex02.throughput_gain", 1.9)[0] is True
    assert a_check_of_a_graded_prediction(book, "ex02.throughput_gain", 1.1)[0] is False


def test_a_check_refuses_a_missing_or_late_prediction(book):
    assert a_check_of_a_graded_prediction(book, "ex02.mode", "os")[0] is False
    book("ex02.mode", None, choices=("os", "round-robin"))
    assert "replace None" in a_check_of_a_graded_prediction(book, "ex02.mode", "os")[1]
    book.reveal("ex02.mode", "os")
    book("ex02.mode", "os", choices=("os", "round-robin"))
    assert a_check_of_a_graded_prediction(book, "ex02.mode", "os") == (
        False, "the prediction was written after the result was shown")


def test_the_stored_values_are_plain_builtins_a_check_can_compare(book):
    class Sneaky(float):
        def __eq__(self, other):
            return True

        __hash__ = float.__hash__

    book("ex.n", Sneaky(3.0))
    book("ex.r", (np.float32(1), Sneaky(2)))
    assert type(book.recorded("ex.n").value) is float
    assert [type(v) for v in book.recorded("ex.r").value] == [float, float]


def test_the_nudge_to_guess_first_comes_once_per_kernel(book, capsys):
    book("lab.a", None)
    book("lab.b", None)
    book.reveal("lab.a", 1.0)
    book.reveal("lab.b", 2.0)
    first, second = capsys.readouterr().out.splitlines()[-2:]
    assert "guess first" in first and second == "lab.b: no prediction. Measured: 2.0."


# --------------------------------------------------------------------------------------------
# the grader's tamper evidence


def test_recording_and_revealing_in_the_kernels_book_is_not_tampering(capsys):
    # A graded notebook predicts between the grader's arming and its checks: that must not look like
    # a change to labkit. Rebinding the book, by contrast, must.
    from labkit.grading._inkernel import _replaced, _snapshot

    seen = _snapshot()
    labkit.predict("ex00.tamper_probe", 3)
    labkit.predict.reveal("ex00.tamper_probe", 3)
    assert _replaced(seen) == []
    original = labkit.predict
    try:
        labkit.predict = PredictionBook()
        assert "labkit.predict" in _replaced(seen)
    finally:
        labkit.predict = original
