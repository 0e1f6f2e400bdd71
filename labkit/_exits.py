"""How a supervised process ended, known once, for the messages that explain it.

Three supervisors tell people why a process died: the pool (to whoever asked for a result), the
cluster (in its event log and stats table) and the grader (to a student whose kernel died). They
speak to different readers, so each phrases its own sentence; what a signal or an exit status
*means* is written here, once:

    exit code, as multiprocessing gives it
        │
        ▼  ending(code)
    Ending: no status (None) │ killed by a signal (SignalMeaning) │ exited with a status
        │
        ├──▶ labkit.pool.describe_exit     "segmentation fault (SIGSEGV, signal 11): a bug in ..."
        ├──▶ labkit.cluster.diagnose       "killed by SIGKILL: out of memory (...), or killed by hand?"
        └──▶ grading's describe_exit       "the kernel was killed (SIGKILL; the usual cause is ...)"

For each signal, :data:`SIGNALS` records what happened (``event``), whether someone sent it or
the process's own code faulted (``sent``), the likely cause for whoever runs the program
(``cause``), and the same in plain words for a student whose notebook kernel died of it
(``plainly``). A signal missing from the table still gets a meaning: "sent by another process or
the kernel".

Also here, because pools and clusters share them: :class:`RemoteTraceback` (a worker's traceback,
carried home as text) and :class:`Lifecycle` (an enum's legal moves, and the one error for an
illegal one).
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from ._lifeline import ORPHAN_EXIT_CODE
from .errors import LabkitError

__all__ = [
    "signal_name",
    "SignalMeaning",
    "SIGNALS",
    "signal_meaning",
    "Ending",
    "ending",
    "ORPHAN_EXIT_CODE",
    "RemoteTraceback",
    "IllegalMoveError",
    "Lifecycle",
]


def signal_name(number: int) -> str:
    """``"SIGKILL"`` for 9, or ``"signal 77"`` for a number this platform has no name for."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# --------------------------------------------------------------------------------------------
# signals


@dataclass(frozen=True)
class SignalMeaning:
    """What it usually means when a process dies of one signal.

    Attributes:
        name: ``"SIGSEGV"``, or ``"signal 77"`` for a number the platform has no name for.
        number: the signal number.
        event: what happened, as a noun phrase (``"segmentation fault"``).
        sent: ``True`` when another process (or the operating system) sent the signal; ``False``
            when the process's own code faulted (a crash in native code).
        cause: the likely cause, for the person who runs the program.
        plainly: what happened to a notebook's kernel, in plain words, as it follows "the kernel"
            in a sentence for a student (``"was killed (SIGKILL; ...)"``).
    """

    name: str
    number: int
    event: str
    sent: bool
    cause: str
    plainly: str


def _meanings() -> dict[str, SignalMeaning]:
    rows = [
        # name, event, sent, cause, plainly
        ("SIGKILL", "kill", True,
         "out of memory (the kernel's OOM killer; see dmesg), or killed by hand?",
         "was killed (SIGKILL; the usual cause is running out of memory)"),
        ("SIGTERM", "termination request", True,
         "another program asked it to stop (kill PID, or a process manager?)",
         "was stopped by SIGTERM (another program asked it to stop)"),
        ("SIGINT", "interrupt", True,
         "Ctrl-C reached it directly",
         "was stopped by SIGINT (an interrupt it did not handle)"),
        ("SIGHUP", "hang-up", True,
         "its terminal went away",
         "was stopped by SIGHUP (its terminal went away)"),
        ("SIGPIPE", "broken pipe", True,
         "it wrote to a pipe nobody reads",
         "was stopped by SIGPIPE (it wrote to a pipe nobody reads)"),
        ("SIGSEGV", "segmentation fault", False,
         "a bug in native code (a C extension, ctypes)",
         "crashed with a segmentation fault (native code read memory it may not, for example through ctypes)"),
        ("SIGBUS", "bus error", False,
         "often a full /dev/shm, or a file that shrank under a memory map",
         "crashed with a bus error (native code read invalid memory)"),
        ("SIGABRT", "abort", False,
         "native code called abort(), e.g. a failed assertion or a double free, or Python hit a "
         "fatal error (see its stderr)",
         "aborted (a fatal error in native code)"),
        ("SIGFPE", "arithmetic fault", False,
         "an integer division by zero in native code",
         "crashed with an arithmetic fault (native code divided by zero)"),
        ("SIGILL", "illegal instruction", False,
         "native code built for a different CPU",
         "crashed on an illegal instruction (native code built for a different CPU)"),
    ]
    table = {}
    for name, event, sent, cause, plainly in rows:
        number = getattr(signal, name, None)
        if number is not None:  # Windows has no SIGKILL, SIGHUP, ...
            table[name] = SignalMeaning(name, int(number), event, sent, cause, plainly)
    return table


#: What each well-known signal means, by name; only the signals this platform has.
SIGNALS: Mapping[str, SignalMeaning] = _meanings()

#: The cause given for a signal missing from :data:`SIGNALS`.
UNKNOWN_SIGNAL_CAUSE = "sent by another process or the kernel"


def signal_meaning(number: int) -> SignalMeaning:
    """The :class:`SignalMeaning` of signal ``number``; a generic one for a signal not in the table."""
    name = signal_name(number)
    known = SIGNALS.get(name)
    if known is not None:
        return known
    return SignalMeaning(name, number, "signal", True, UNKNOWN_SIGNAL_CAUSE, f"was stopped by {name}")


# --------------------------------------------------------------------------------------------
# exit codes


@dataclass(frozen=True)
class Ending:
    """How one process ended, decoded from a ``multiprocessing``-style exit code.

    Exactly one of these holds: ``exitcode is None`` (no status: still running, or lost),
    ``signal`` is set (killed by a signal), or ``status`` is set (it exited with that status).
    """

    exitcode: int | None
    signal: SignalMeaning | None = None
    status: int | None = None

    @property
    def orphaned(self) -> bool:
        """Whether it exited because it saw its parent die (:mod:`labkit._lifeline`)."""
        return self.status == ORPHAN_EXIT_CODE


def ending(exitcode: int | None) -> Ending:
    """Decode ``exitcode`` as :attr:`multiprocessing.Process.exitcode` gives it (``-9``: SIGKILL).

    A ``subprocess`` return code follows the same rule (negative: killed by that signal).
    """
    if exitcode is None:
        return Ending(None)
    if exitcode < 0:
        return Ending(exitcode, signal=signal_meaning(-exitcode))
    return Ending(exitcode, status=exitcode)


# --------------------------------------------------------------------------------------------
# tracebacks that crossed a process boundary


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, as text.

    An exception that comes back from a worker lost its traceback on the way (tracebacks do not
    pickle). The pool and the cluster attach the worker's formatted traceback as the
    ``__cause__`` of the error they raise, so a notebook shows both: where it failed in the
    worker, then where the parent noticed.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\n" + self.text.rstrip("\n")


RemoteTraceback.__module__ = "labkit.pool"  # where users import it from; shows in tracebacks


# --------------------------------------------------------------------------------------------
# lifecycles


class IllegalMoveError(LabkitError, RuntimeError):
    """A worker was moved between two states its lifecycle does not connect: a bug in labkit.

    Please report it with the message; the supervisor that raised it cannot trust its own
    bookkeeping any more.
    """


State = TypeVar("State", bound=enum.Enum)


class Lifecycle(Generic[State]):
    """The legal moves between the states of one enum, checked on every move.

    Like a board game's rules: the table says where a piece may go from each square, and
    :meth:`move` refuses every other move with :class:`IllegalMoveError`. The pool's and the
    cluster's workers each have a lifecycle of their own states; both are checked the same way.

    Args:
        moves: for every member of the enum, the states it may move to (an end state maps to
            nothing). A member left out is a mistake in the table and is refused here.
    """

    def __init__(self, moves: Mapping[State, Iterable[State]]) -> None:
        table = {state: frozenset(targets) for state, targets in moves.items()}
        if not table:
            raise ValueError("a lifecycle needs at least one state")
        members = set(type(next(iter(table))))
        missing = members - table.keys()
        if missing:
            raise ValueError(f"the lifecycle does not say where these states may go: {sorted(m.name for m in missing)}")
        self.table: Mapping[State, frozenset[State]] = table

    def allows(self, old: State, new: State) -> bool:
        """Whether a worker in state ``old`` may move to ``new``."""
        return new in self.table[old]

    def move(self, old: State, new: State, who: str) -> State:
        """Return ``new`` if ``old -> new`` is legal; else raise :class:`IllegalMoveError` naming ``who``."""
        if not self.allows(old, new):
            raise IllegalMoveError(f"{who}: {old.value} -> {new.value} is not a legal move")
        return new

    def __repr__(self) -> str:
        moves = "; ".join(f"{old.value} -> {', '.join(sorted(n.value for n in new)) or '(end)'}"
                          for old, new in self.table.items())
        return f"<Lifecycle {moves}>"
