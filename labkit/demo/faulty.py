"""Demo code that fails on purpose, for lab 03 (crash isolation) and its exercise.

Three kinds of failure, each a stand-in for something that happens in production:

=====================================  ======================================================
:func:`crash_hard`                     a fatal crash of the whole process, the way a bug in a
                                       C extension crashes it (a segmentation fault)
:func:`render_document`                a renderer with that bug: one corrupt document
                                       (13, and its multiples) crashes whatever process renders it
:func:`flaky_app`                      the demo app plus ``/render?doc=N``, which renders on the
                                       worker's own loop: document 13 kills the worker
:func:`crashing_app`                   the demo app, except that it cannot boot while a "broken
                                       deploy" marker file exists: every new worker dies at start
=====================================  ======================================================

Nothing here crashes at import time; only calling these functions does. A crashed process
writes no core file (:func:`crash_hard` turns core dumps off for itself first), and what it
prints goes to its own standard error, never to a notebook cell.
"""

from __future__ import annotations

import ctypes
import hashlib
import os

from . import DemoApp, _Base, demo_app

__all__ = ["CORRUPT_DOC", "is_corrupt", "crash_hard", "render_document", "flaky_app", "crashing_app",
           "BrokenDeployError"]

#: The first corrupt document: rendering it (or any positive multiple of it) crashes the renderer.
CORRUPT_DOC = 13

# Largest document number /render accepts: a typo should not look like a crash.
MAX_DOC = 1_000_000


class BrokenDeployError(RuntimeError):
    """The app refuses to boot: its deploy is broken (the marker file exists)."""


def crash_hard() -> None:
    """End the calling process with a segmentation fault, as a buggy C extension would.

    Not an exception: no ``try``/``except`` catches it, no ``finally`` runs, and every thread of
    the process dies at once. Core dumps are switched off for this process first, so the crash
    leaves no ``core`` file behind.
    """
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass  # no resource module (Windows), or not allowed: a core file is the only cost
    ctypes.string_at(0)  # read address 0: SIGSEGV on POSIX, an access violation on Windows
    os.abort()  # never reached where reading address 0 faults; a last resort elsewhere


def is_corrupt(doc: int) -> bool:
    """Whether rendering ``doc`` crashes: 13, 26, 39, ... (the positive multiples of :data:`CORRUPT_DOC`)."""
    return doc > 0 and doc % CORRUPT_DOC == 0


def render_document(doc: int) -> str:
    """Render stored document ``doc`` as a line of HTML; a corrupt one crashes the process.

    The rendering is a stand-in for a C library: deterministic output for every other document,
    and, for the corrupt ones (:func:`is_corrupt`), the kind of crash Python cannot catch.
    """
    if is_corrupt(doc):
        crash_hard()
    digest = hashlib.sha256(f"document {doc}".encode()).hexdigest()[:12]
    return f"<h1>Document {doc}</h1><p>{digest}</p>"


class _Render(_Base):
    def get(self) -> None:
        doc = self.int_argument("doc", 1, 0, MAX_DOC)
        self.write(render_document(doc))  # on the worker's own loop: a corrupt document kills it


def flaky_app() -> DemoApp:
    """The demo app plus ``/render?doc=N``: a corrupt document (13, 26, ...) crashes the worker serving it."""
    app = demo_app()
    app.add_handlers(r".*", [(r"/render", _Render)])
    return app


def crashing_app(broken_marker: str) -> DemoApp:
    """The demo app, which refuses to boot while the file ``broken_marker`` exists.

    A stand-in for a bad deploy (a missing setting, a config file that no longer parses): workers
    already running keep serving, but every new one dies during start-up, so a supervisor that
    restarts it would restart it forever. Delete the file to "fix the deploy".
    """
    if os.path.exists(broken_marker):
        raise BrokenDeployError(f"cannot boot: the deploy is broken ({os.path.basename(broken_marker)} exists)")
    return demo_app()
