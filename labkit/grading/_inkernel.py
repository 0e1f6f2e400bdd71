"""The grader's agent inside a student's kernel: sealed verdicts and tamper evidence.

The grader's first cell, run before any of the student's code, calls :func:`arm`. Arming

1. reads the run's secret (a random key) from a file the grader wrote for this kernel alone,
   deletes the file and forgets the environment variable that named it, so that no later cell
   can find the key in a file, a variable or a cell's source;
2. takes the machine-wide lock path (:data:`~labkit.grading.checks.CHECK_LOCK_ENV`) out of the
   environment too: only the grader's own check cells take the lock, so a student's own call to
   ``labkit.check`` in some cell never makes another student's measurement wait;
3. loads every check of the exercise and notes what labkit's functions are at that moment;
4. returns a private copy of the ``labkit`` module whose ``check`` is :func:`sealed` below. The
   grader rewrites each canonical check cell to use that copy under a random name, so a student
   who rebinds ``labkit`` or ``check`` in their namespace changes nothing for the grader.

A sealed check runs the real :func:`labkit.check` and then displays a *seal*: the part, the
verdict and an HMAC of both under the run's key (MIME type :data:`SEAL_MIME`). The grader scores a
part only from a seal whose HMAC it can verify, found in the output of the canonical check cell's
own execution. Printed text, displayed records, stored outputs and edited cells carry no valid
seal, so they cannot raise a score. Think of a wax seal pressed with a ring only the grader holds:
anyone can draw a seal, no one else can press that one.

Before and after running, a sealed check compares labkit's modules with what arming saw: every
name of every labkit module (functions, classes and constants such as
``labkit.grading.ex01.BLOCKED_SHARE``), every attribute of every labkit class
(``labkit.probe.LoopProbe.timeline``), the code and defaults of every function, and the ``time``
module's functions. A notebook that changed one, before the check or while the check ran its code,
gets a failing seal that names what it changed. This is tamper *evidence* for everything reachable
by ordinary assignment, not a sandbox: code in the same interpreter can, with deliberate effort,
reach the key through introspection.

The grader checks seals with :func:`verify_seals`, beside :func:`seal_token`, so that one module
knows the seal's format on both sides.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["SEAL_MIME", "ARM_ENV", "seal_token", "verify_seals", "arm"]

#: MIME type of a seal: ``{"part": ..., "passed": ..., "message": ..., "token": ...}``.
SEAL_MIME = "application/vnd.labkit.grade-seal+json"

#: Environment variable naming the file that holds the run's key; read once, then removed.
ARM_ENV = "LABKIT_GRADE_ARM"

# Modules whose names a check relies on to measure; changing one voids the verdict.
_WATCHED_PREFIXES = ("labkit",)
_WATCHED_MODULES = ("time",)

# The module-level names that labkit itself rebinds while it runs: everything else must stay as
# arming saw it.
_RUNTIME_STATE = frozenset({
    ("labkit.grading.checks", "_lock_depth"),
    ("labkit.pool._executor", "_exit_hook_registered"),
})

# Class attributes that Python itself keeps up to date.
_CLASS_BOOKKEEPING = frozenset({"__dict__", "__weakref__", "__abstractmethods__", "_abc_impl"})


def seal_token(key: bytes, part: str, passed: bool, message: str) -> str:
    """The HMAC that vouches for one verdict; the grader recomputes it to verify a seal."""
    payload = json.dumps([part, bool(passed), message], ensure_ascii=True)
    return hmac.new(key, payload.encode("ascii"), hashlib.sha256).hexdigest()


def verify_seals(records: Sequence[Any], part: str, key: bytes) -> tuple[tuple[bool, str] | None, int]:
    """The verdict of ``part`` vouched for by a valid seal, and how many records were not valid.

    Of several valid seals (there is one, unless the key leaked) a failure wins.
    """
    verdict, forged = None, 0
    for record in records:
        if not isinstance(record, Mapping):
            forged += 1
            continue
        passed, message, token = record.get("passed"), record.get("message"), record.get("token")
        if (record.get("part") != part or not isinstance(passed, bool) or not isinstance(message, str)
                or not isinstance(token, str)):
            forged += 1
            continue
        if not hmac.compare_digest(token, seal_token(key, part, passed, message)):
            forged += 1
            continue
        if verdict is None or not passed:
            verdict = (passed, message)
    return verdict, forged


def _watched_modules() -> list[types.ModuleType]:
    found = [module for name, module in list(sys.modules.items())
             if isinstance(module, types.ModuleType) and name.split(".", 1)[0] in _WATCHED_PREFIXES]
    return found + [sys.modules[name] for name in _WATCHED_MODULES if name in sys.modules]


_MISSING = object()


def _fingerprint(value: Any) -> tuple[Any, ...]:
    """What identifies a value for tamper evidence: the object, and for a function its code and defaults."""
    if isinstance(value, types.FunctionType):
        return (value, value.__code__, value.__defaults__, value.__kwdefaults__)
    return (value,)


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _places() -> dict[str, tuple[Any, str]]:
    """Every watched place: ``"module.name"`` or ``"module.Class.attr"`` -> (its owner, the name)."""
    places: dict[str, tuple[Any, str]] = {}
    classes: dict[int, type] = {}
    for module in _watched_modules():
        for name, value in list(vars(module).items()):
            if name.startswith("__") or (module.__name__, name) in _RUNTIME_STATE:
                continue
            places[f"{module.__name__}.{name}"] = (module, name)
            # A real class (on Python 3.10, an alias such as ``tuple[str, ...]`` also passes isinstance(type)).
            if (isinstance(value, type) and not isinstance(value, types.GenericAlias)
                    and str(type.__dict__["__module__"].__get__(value)).startswith("labkit")):
                classes[id(value)] = value
    for cls in classes.values():
        owner = f"{cls.__module__}.{cls.__qualname__}"
        for name in list(vars(cls)):
            if name not in _CLASS_BOOKKEEPING:
                places[f"{owner}.{name}"] = (cls, name)
    return places


def _snapshot() -> dict[str, tuple[Any, str, tuple[Any, ...]]]:
    """Each watched place, with the fingerprint of what it holds now."""
    return {where: (owner, name, _fingerprint(_read(owner, name))) for where, (owner, name) in _places().items()}


def _read(owner: Any, name: str) -> Any:
    # vars(), not getattr: a class's own dict, never a descriptor or a metaclass's answer.
    return vars(owner).get(name, _MISSING)


def _replaced(snapshot: dict[str, tuple[Any, str, tuple[Any, ...]]]) -> list[str]:
    """The places whose value is no longer what :func:`_snapshot` saw."""
    return sorted(where for where, (owner, name, seen) in snapshot.items()
                  if not _same(_fingerprint(_read(owner, name)), seen))


def arm(parts: Iterable[str]) -> types.ModuleType:
    """Prepare this kernel for grading and return the private ``labkit`` the check cells use.

    ``parts`` are the exercise's check ids. Raises :class:`~labkit.grading.grade.GradeError` when the
    kernel was not started by the grader (there is no key to read).
    """
    path = os.environ.pop(ARM_ENV, None)
    if not path:
        from ._results import GradeError

        raise GradeError(f"{ARM_ENV} is not set: this kernel was not started by labkit grade; run the "
                         f"notebook with labkit check instead")
    with open(path, encoding="utf-8") as handle:
        armed = json.load(handle)
    os.unlink(path)
    key = bytes.fromhex(armed["key"])

    from IPython.display import display

    import labkit
    from labkit.errors import LabkitError

    from . import checks

    lock_path = os.environ.pop(checks.CHECK_LOCK_ENV, None)
    registered: dict[str, Callable[..., Awaitable[str]] | None] = {}
    for part in parts:
        try:
            registered[part] = checks._find(part)
        except LabkitError:
            registered[part] = None  # registered later by a cell of the notebook itself
    snapshot = _snapshot()
    real_check, failed_type, result_type = checks.check, checks.CheckFailed, checks.CheckResult

    def publish(part: str, passed: bool, message: str) -> None:
        token = seal_token(key, part, passed, message)
        display({SEAL_MIME: {"part": part, "passed": passed, "message": message, "token": token}}, raw=True)

    def refuse_if_changed(part: str, when: str) -> None:
        changed = _replaced(snapshot)
        current = checks._REGISTRY.get(part)
        if registered.get(part) is not None and current is not registered[part]:
            changed.append(f"the registered check for {part}")
        if changed:
            shown = ", ".join(changed[:5]) + (" and more" if len(changed) > 5 else "")
            message = (f"your notebook changed {shown}{when}, which the check relies on, so its verdict cannot "
                       f"be trusted. Remove that code and submit again.")
            publish(part, False, message)
            raise failed_type(result_type(part, False, message))

    async def sealed(part: str, *args: Any, **kwargs: Any) -> None:
        """Run ``labkit.check`` for the grader and seal its verdict."""
        refuse_if_changed(part, "")
        if lock_path:
            os.environ[checks.CHECK_LOCK_ENV] = lock_path
        try:
            await real_check(part, *args, **kwargs)
        except failed_type as exc:
            refuse_if_changed(part, " while the check ran")
            publish(part, False, exc.result.message)
            raise
        finally:
            os.environ.pop(checks.CHECK_LOCK_ENV, None)
        refuse_if_changed(part, " while the check ran")
        publish(part, True, "")

    private = types.ModuleType("labkit", labkit.__doc__)
    namespace = vars(private)
    namespace.update(vars(labkit))
    namespace["check"] = sealed
    # Names labkit loads on first use are fetched from the real module when asked for.
    namespace["__getattr__"] = lambda name: getattr(labkit, name)
    return private
