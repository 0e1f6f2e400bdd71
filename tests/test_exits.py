"""How a process ended is known once (labkit._exits) and phrased by the pool, cluster and grader."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit._exits import ORPHAN_EXIT_CODE, SIGNALS, ending, signal_meaning
from labkit.cluster import diagnose
from labkit.grading._kernel import describe_exit as describe_kernel_exit
from labkit.pool import describe_exit

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# Where a context keeps its own words for one signal, and why (see the callers' comments).
CLUSTER_OWN_WORDS = {"SIGSEGV"}


def saved_text_outputs(notebook: str) -> str:
    """All text a saved notebook shows in its outputs, joined."""
    cells = json.loads((NOTEBOOKS / notebook).read_text())["cells"]
    texts = []
    for cell in cells:
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain", "")
            texts.append("".join(text) if isinstance(text, list) else str(text))
    return "\n".join(texts)


def _sleep_forever() -> None:
    time.sleep(60)


# --------------------------------------------------------------------------------------------
# decoding


def test_a_negative_exit_code_is_a_signal_and_a_positive_one_a_status():
    assert ending(None).exitcode is None and ending(None).signal is None
    killed = ending(-signal.SIGKILL)
    assert killed.signal is SIGNALS["SIGKILL"] and killed.status is None
    assert ending(3).status == 3 and ending(3).signal is None
    assert ending(ORPHAN_EXIT_CODE).orphaned and not ending(1).orphaned


def test_a_signal_missing_from_the_table_still_gets_a_meaning():
    meaning = signal_meaning(77)
    assert meaning.name == "signal 77" and meaning.sent
    assert meaning.cause == "sent by another process or the kernel"


def test_signals_sent_from_outside_are_told_apart_from_crashes_in_native_code():
    assert SIGNALS["SIGKILL"].sent and SIGNALS["SIGTERM"].sent
    assert not any(SIGNALS[name].sent for name in ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGFPE", "SIGILL"))


def test_a_process_killed_for_real_is_read_as_killed_by_sigkill():
    process = multiprocessing.get_context("spawn").Process(target=_sleep_forever)
    process.start()
    process.kill()
    process.join(30)
    assert ending(process.exitcode).signal.name == "SIGKILL"
    assert describe_exit(process.exitcode).startswith("killed by SIGKILL (signal 9)")
    process.close()


def test_a_segmentation_fault_for_real_is_read_as_a_crash_in_native_code():
    code = "from labkit.demo.faulty import crash_hard; crash_hard()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert ending(result.returncode).signal is SIGNALS["SIGSEGV"]
    assert describe_kernel_exit(result.returncode).startswith("the kernel crashed with a segmentation fault")


# --------------------------------------------------------------------------------------------
# one meaning, three phrasings


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_the_pool_and_the_cluster_give_the_same_cause_for_a_signal(name):
    meaning = SIGNALS[name]
    assert describe_exit(-meaning.number).endswith(f": {meaning.cause}")
    if name not in CLUSTER_OWN_WORDS:
        assert diagnose(-meaning.number) == f"killed by {name}: {meaning.cause}"


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_the_grader_tells_a_student_about_every_known_signal_in_plain_words(name):
    meaning = SIGNALS[name]
    assert describe_kernel_exit(-meaning.number) == f"the kernel {meaning.plainly}"


def test_each_context_keeps_its_words_for_exit_statuses():
    assert describe_exit(None) == "vanished without an exit status"
    assert diagnose(None) == "still running"
    assert describe_kernel_exit(None) == "the kernel stopped unexpectedly"
    assert "believed the pool's process had died" in describe_exit(ORPHAN_EXIT_CODE)
    assert "lost its primary process" in diagnose(ORPHAN_EXIT_CODE)
    assert describe_kernel_exit(1) == "the kernel exited with status 1 (os._exit, or a fatal error in the interpreter)"


def test_the_messages_saved_in_the_crash_isolation_notebook_are_still_the_ones_produced():
    shown = saved_text_outputs("03_crash_isolation.ipynb")
    assert diagnose(-signal.SIGKILL) in shown  # the cluster's event log
    assert describe_exit(-signal.SIGSEGV) in shown  # the pool's WorkerCrashedError
