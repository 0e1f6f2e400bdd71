"""Predictions: the student's guess, written down before the experiment and shown beside its result.

Every lab asks "Predict:" before it measures. A guess kept in one's head is easy to revise once the
answer is on the screen, so the labs ask for it in a cell instead::

    labkit.predict("lab02.cpu_speedup", 1.8, unit="x")     # before the experiment
    ...                                                    # the experiment
    labkit.predict.reveal("lab02.cpu_speedup", speedup)    # after it

The first call records the guess and prints it back; the second prints it beside the measured
value with a short, friendly verdict::

    ✎ lab02.cpu_speedup: you predict x1.8. Now run the experiment.
    lab02.cpu_speedup: you predicted x1.8. Measured: x1.95. Spot on.

A guess left as ``None`` means "not predicted yet": the reveal then shows the result alone, kindly,
instead of failing. :meth:`PredictionBook.trend` turns two measurements into the answer of a
choice ``("higher", "about the same", "lower")``.

Three kinds of guess, so that each question is asked in the form that suits it:

- a **number**: ``labkit.predict("lab01.thousand_waits", 1000, unit="s")``;
- a **range** ``(low, high)``, when a band is the honest answer: ``(1.5, 2.0)``;
- a **choice** among words the lab offers: ``labkit.predict(key, "no", choices=("yes", "no"))``.

Where the predictions live. Each call records into one book per kernel, this module's
:data:`predict`; the literal in the cell's source is the lasting copy, which an instructor reads
in the saved notebook (widget state is not saved, which is why there is no widget here). An
exercise check may read a recorded prediction with :meth:`PredictionBook.recorded` and judge it
with :meth:`PredictionBook.judge`, whose :attr:`Reveal.right` is ``True`` or ``False`` only where a
guess can be judged fairly (a range, a choice) and ``None`` for a bare number. In a check::

    guess = labkit.predict.recorded("ex02.fair_mode")
    if guess is None or not guess.made or guess.late:
        ...  # fail: "write your prediction in its cell, before the experiment"
    right = labkit.predict.judge("ex02.fair_mode", modes_that_were_fair).right

The values a prediction holds are plain built-ins (``int``, ``float``, ``str``, a tuple of two
numbers), so a check can compare them without asking the student's objects anything.

Note on names: ``labkit.predict`` is the book (callable), not this module; import the classes
with ``from labkit.predict import Prediction, PredictionBook, Reveal``.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["predict", "PredictionBook", "Prediction", "Reveal", "Value", "SPOT_ON", "CLOSE"]

#: A guess as it is stored: nothing yet, a number, a range (low, high), or one of the choices.
Value = None | int | float | tuple[float, float] | str

#: A number within this share of the measured value is "spot on" (10%: noise on a quiet machine).
SPOT_ON = 0.10

#: A number within this factor of the measured value is "close"; further off, the reveal says how far.
CLOSE = 1.5

# Keys look like "lab02.cpu_speedup" or "ex02.workers": words joined by dots.
_KEY = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ConfigurationError(
            f"a prediction's name must be words joined by dots, such as 'lab02.cpu_speedup'; got {key!r}")
    return key


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _plain_number(value: numbers.Real) -> int | float:
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _format_number(value: float) -> str:
    """Counts as counts (``1,000``); measurements to three figures, a float keeping its point (``1.0``)."""
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:,.0f}"
    text = f"{value:.3g}"
    return text if any(mark in text for mark in ".e") else text + ".0"


def _with_unit(text: str, unit: str) -> str:
    if not unit:
        return text
    if unit == "x":
        return f"x{text}"  # a speedup, written as the labs write it: x1.95
    if unit.startswith("%"):
        return f"{text}{unit}"
    return f"{text} {unit}"


def _quoted(choices: Iterable[str]) -> str:
    words = [f'"{choice}"' for choice in choices]
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else "".join(words)


@dataclass(frozen=True)
class Prediction:
    """One recorded guess.

    Attributes:
        key: its name, such as ``"lab02.cpu_speedup"``.
        value: ``None`` (not predicted yet), a number, a range ``(low, high)`` or one of ``choices``.
        choices: the words the question offers, or ``None`` for a number or a range.
        unit: how a number is written: ``"x"`` for a speedup (``x1.8``), ``"%"``, ``"ms"``, ...
        late: recorded after this kernel had already revealed the result: hindsight, not a prediction.
    """

    key: str
    value: Value
    choices: tuple[str, ...] | None = None
    unit: str = ""
    late: bool = False

    @property
    def kind(self) -> str:
        """``"choice"``, ``"range"`` or ``"number"``: what the question asks for."""
        if self.choices is not None:
            return "choice"
        return "range" if isinstance(self.value, tuple) else "number"

    @property
    def made(self) -> bool:
        """Whether a guess was written (the placeholder ``None`` is no guess)."""
        return self.value is not None

    def describe(self) -> str:
        """The guess in words: ``x1.8``, ``between 1 and 2 s``, ``"no"``, or ``nothing yet``."""
        if self.value is None:
            return "nothing yet"
        if isinstance(self.value, str):
            return f'"{self.value}"'
        if isinstance(self.value, tuple):
            low, high = (_format_number(v) for v in self.value)
            if self.unit == "x":
                return f"between x{low} and x{high}"
            return "between " + _with_unit(f"{low} and {high}", self.unit)
        return _with_unit(_format_number(self.value), self.unit)

    def __str__(self) -> str:
        if not self.made:
            if self.choices is not None:
                wanted = f"one of {_quoted(self.choices)}"
            else:
                wanted = "a number" + (f" ({self.unit})" if self.unit not in ("", "x") else "")
                wanted += " or a range (low, high)"
            return f"✎ {self.key}: no guess yet. Replace None with {wanted}, then run this cell again."
        text = f"✎ {self.key}: you predict {self.describe()}."
        if self.late:
            return text + " (Recorded after this kernel showed the result: hindsight, not a prediction.)"
        return text + " Now run the experiment."


@dataclass(frozen=True)
class Reveal:
    """A prediction beside what was measured.

    Attributes:
        key: the prediction's name.
        prediction: what was recorded, or ``None`` if nothing was (the predict cell did not run).
        measured: the measured number, the right choice, or the collection of right choices;
            ``None`` when nothing could be measured on this machine.
        verdict: one word or two: ``"spot on"``, ``"close"``, ``"too high"``, ``"too low"``,
            ``"inside"``, ``"above"``, ``"below"``, ``"right"``, ``"wrong"``, ``"not predicted"``,
            ``"not recorded"`` or ``"not measured"``.
        text: the friendly sentence the reveal prints.
    """

    key: str
    prediction: Prediction | None
    measured: object
    verdict: str
    text: str

    @property
    def right(self) -> bool | None:
        """``True``/``False`` for a range or a choice (fair to grade), ``None`` otherwise."""
        if self.verdict in ("inside", "right"):
            return True
        if self.verdict in ("above", "below", "wrong"):
            return False
        return None

    def __str__(self) -> str:
        return self.text


class PredictionBook:
    """The kernel's book of predictions: call it to record a guess, ``reveal`` to compare.

    Think of a lab notebook in the old sense: the guess is written in ink before the experiment,
    and the result goes on the same line afterwards. One book, :data:`predict`, serves a kernel;
    a fresh one (``PredictionBook()``) is empty, which is what tests want.
    """

    def __init__(self) -> None:
        self._recorded: dict[str, Prediction] = {}
        self._revealed: set[str] = set()
        self._nudged = False  # whether a reveal has already asked for a guess first

    def __repr__(self) -> str:
        names = ", ".join(self._recorded) or "none"
        return f"<PredictionBook: {len(self._recorded)} recorded ({names})>"

    def __call__(self, key: str, value: object, *, choices: Iterable[str] | None = None, unit: str = "") -> None:
        """Record a guess under ``key`` and print it back.

        ``value`` is ``None`` (not predicted yet), a number, a range ``(low, high)`` of numbers, or,
        when ``choices`` are given, one of them. ``unit`` says how numbers are written (``"x"``,
        ``"%"``, ``"ms"``, ``"cores"``, ...). Predicting again under the same key replaces the guess.
        Raises :class:`~labkit.errors.ConfigurationError`, naming the fix, for anything else.
        """
        key = _check_key(key)
        if not isinstance(unit, str):
            raise ConfigurationError(f"{key}: unit must be text such as 'x', 'ms' or 'cores'; got {unit!r}")
        options = self._check_choices(key, choices)
        stored = self._check_value(key, value, options)
        prediction = Prediction(key, stored, options, unit, late=key in self._revealed and stored is not None)
        self._recorded[key] = prediction
        print(prediction)

    def recorded(self, key: str) -> Prediction | None:
        """The prediction recorded under ``key`` in this kernel, or ``None`` if its cell never ran."""
        return self._recorded.get(_check_key(key))

    def judge(self, key: str, measured: object) -> Reveal:
        """Compare the prediction under ``key`` with ``measured``, without printing anything.

        ``measured`` is a number for a number or a range; for a choice, the right choice or a
        collection of right choices (when several hold); ``None`` when nothing was measured.
        """
        key = _check_key(key)
        prediction = self._recorded.get(key)
        measured = self._check_measured(key, prediction, measured)
        verdict, comment = self._verdict(prediction, measured)
        shown = self._show_measured(prediction, measured)
        if prediction is None:
            text = (f"{key}: no prediction was recorded in this kernel (run its predict cell before the "
                    f"experiment next time). {shown}")
        elif not prediction.made:
            text = f"{key}: no prediction. {shown} {comment}"
        else:
            text = f"{key}: you predicted {prediction.describe()}. {shown} {comment}"
            if prediction.late:
                text += " (Your prediction was written after the result was shown.)"
        return Reveal(key, prediction, measured, verdict, text.strip())

    def reveal(self, key: str, measured: object) -> None:
        """Print the prediction under ``key`` beside ``measured``, with a short verdict.

        Takes what :meth:`judge` takes. Kind to a missing guess: it shows the result anyway, and
        asks for a guess next time only once per kernel.
        """
        shown = self.judge(key, measured)
        self._revealed.add(shown.key)
        text = shown.text
        if shown.verdict == "not predicted":
            if self._nudged:  # say it once per kernel, not after every result
                text = text.replace(" " + _GUESS_FIRST, "")
            self._nudged = True
        print(text)

    @staticmethod
    def trend(before: float, after: float, within: float = 0.15) -> str:
        """``"higher"``, ``"about the same"`` or ``"lower"``: how ``after`` compares with ``before``.

        Values within ``within`` (a share of the larger) count as about the same. Labs use it to
        turn two measurements into the answer of a choice ``("higher", "about the same", "lower")``.
        """
        if not (_is_number(before) and _is_number(after)):
            raise ConfigurationError(f"trend compares two numbers; got {before!r} and {after!r}")
        if abs(after - before) <= within * max(abs(before), abs(after)):
            return "about the same"
        return "higher" if after > before else "lower"

    # ----------------------------------------------------------------------------------------
    # checking what a cell passes in

    @staticmethod
    def _check_choices(key: str, choices: Iterable[str] | None) -> tuple[str, ...] | None:
        if choices is None:
            return None
        if isinstance(choices, str) or not isinstance(choices, Iterable):
            raise ConfigurationError(f"{key}: choices must be a tuple of words, such as ('yes', 'no'); got {choices!r}")
        options = tuple(choices)
        if len(options) < 2 or not all(type(c) is str and c for c in options) or len(set(options)) != len(options):
            raise ConfigurationError(
                f"{key}: choices must be two or more different words, such as ('yes', 'no'); got {choices!r}")
        return options

    @staticmethod
    def _check_value(key: str, value: object, choices: tuple[str, ...] | None) -> Value:
        if value is None:
            return None
        if choices is not None:
            if isinstance(value, str) and value in choices:
                return str(value)
            raise ConfigurationError(f"{key}: the prediction must be one of {_quoted(choices)}; got {value!r}")
        if isinstance(value, bool):
            raise ConfigurationError(f"{key}: {value!r} is not a number; write a number or a range (low, high)")
        if _is_number(value):
            assert isinstance(value, numbers.Real)
            if not math.isfinite(value):
                raise ConfigurationError(f"{key}: the prediction must be a finite number; got {value!r}")
            return _plain_number(value)
        if isinstance(value, (tuple, list)):
            if len(value) == 2 and all(_is_number(v) and math.isfinite(v) for v in value):
                low, high = (float(v) for v in value)
                if low <= high:
                    return (low, high)
                raise ConfigurationError(f"{key}: a range is (low, high), the smaller first; got {value!r}")
            raise ConfigurationError(f"{key}: a range is two numbers (low, high), such as (1.5, 2.0); got {value!r}")
        if isinstance(value, str):
            raise ConfigurationError(
                f"{key}: this question wants a number or a range (low, high), not words; got {value!r}")
        raise ConfigurationError(
            f"{key}: a prediction is a number, a range (low, high) or None; got {type(value).__name__} {value!r}")

    @staticmethod
    def _check_measured(key: str, prediction: Prediction | None, measured: object) -> object:
        if measured is None:
            return None
        choices = prediction.choices if prediction is not None else None
        if choices is not None:
            answers = [measured] if isinstance(measured, str) else measured
            if not isinstance(answers, Collection) or not all(isinstance(a, str) and a in choices for a in answers):
                raise ConfigurationError(
                    f"{key}: the measured answer must be one of {_quoted(choices)} (or a list of them); "
                    f"got {measured!r}")
            return measured if isinstance(measured, str) else tuple(dict.fromkeys(answers))
        if _is_number(measured):
            assert isinstance(measured, numbers.Real)
            return _plain_number(measured)
        if prediction is None and isinstance(measured, str):
            return measured
        if prediction is None and isinstance(measured, Collection) and all(isinstance(a, str) for a in measured):
            return tuple(measured)
        raise ConfigurationError(f"{key}: the measured value must be a number for this prediction; got {measured!r}")

    # ----------------------------------------------------------------------------------------
    # the verdict, in words

    @staticmethod
    def _show_measured(prediction: Prediction | None, measured: object) -> str:
        if measured is None:
            return "Nothing was measured on this machine to compare with."
        if isinstance(measured, str):
            return f'The answer: "{measured}".'
        if isinstance(measured, tuple):
            return "The answer: " + (_quoted(measured) or "none of the choices") + "."
        unit = prediction.unit if prediction is not None else ""
        assert isinstance(measured, (int, float))
        return f"Measured: {_with_unit(_format_number(measured), unit)}."

    @staticmethod
    def _verdict(prediction: Prediction | None, measured: object) -> tuple[str, str]:
        if prediction is None:
            return "not recorded", ""
        if not prediction.made:
            return "not predicted", _GUESS_FIRST
        if measured is None:
            return "not measured", ""
        guess = prediction.value
        if isinstance(guess, str):
            answers = (measured,) if isinstance(measured, str) else measured
            assert isinstance(answers, tuple)
            if guess in answers:
                return "right", "Right."
            return "wrong", "Not what you expected: that is the interesting part, so read on."
        assert isinstance(measured, (int, float))
        if isinstance(guess, tuple):
            low, high = guess
            if measured < low:
                return "below", "Below your range."
            if measured > high:
                return "above", "Above your range."
            return "inside", "Inside your range: well predicted."
        assert isinstance(guess, (int, float))
        return _number_verdict(float(guess), float(measured))


_GUESS_FIRST = "Next time, guess first: a wrong guess teaches more than none."


def _number_verdict(guess: float, measured: float) -> tuple[str, str]:
    if guess == measured or abs(guess - measured) <= SPOT_ON * max(abs(guess), abs(measured)):
        return "spot on", "Spot on."
    direction = "higher" if measured > guess else "lower"
    if guess > 0 and measured > 0:
        ratio = max(guess, measured) / min(guess, measured)
        if ratio <= CLOSE:
            off = abs(measured - guess) / guess
            return "close", f"Close: the result came out {off:.0%} {direction} than your guess."
        verdict = "too high" if guess > measured else "too low"
        times = f"{ratio:,.0f}" if ratio >= 10 else f"{ratio:.1f}"
        return verdict, f"Your guess was {times} times {verdict}."
    verdict = "too high" if guess > measured else "too low"
    return verdict, f"The result came out {direction} than your guess."


#: The kernel's book of predictions; ``labkit.predict`` is this object.
predict = PredictionBook()
