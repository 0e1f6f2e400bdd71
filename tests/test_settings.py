"""Each cluster setting is declared once; Cluster, its checks and ``labkit serve`` follow the declaration."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.cluster import Cluster
from labkit.cluster._settings import ClusterSettings, add_arguments, declared, from_arguments
from labkit.cores import safe_start_method
from labkit.errors import ConfigurationError

APP = "labkit.demo:demo_app"
SOLUTIONS = Path(__file__).resolve().parents[1] / "solutions"
DURATIONS = ["min_uptime", "restart_delay", "max_restart_delay", "stable_uptime", "heartbeat_timeout",
             "graceful_timeout", "startup_timeout"]


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("app")
    add_arguments(parser)
    return parser


def test_cluster_takes_every_declared_setting_with_its_declared_default_in_order():
    parameters = inspect.signature(Cluster).parameters
    taken = {name: p.default for name, p in parameters.items() if name not in ("app", "options", "on_change")}
    assert list(taken) == [d.name for d in declared()]
    assert taken == {d.name: d.default for d in declared()}


def test_the_settings_a_cluster_was_given_reach_its_supervisor():
    cluster = Cluster(APP, workers=1, graceful_timeout=3.5, max_restarts=2, port=0)
    settings = cluster._config.settings
    assert (settings.graceful_timeout, settings.max_restarts) == (3.5, 2)
    assert settings.policy.max_restarts == 2
    assert cluster.graceful_timeout == 3.5  # the attribute notebooks read is still there


@pytest.mark.parametrize("name", DURATIONS)
def test_every_duration_refuses_a_negative_number_and_names_itself(name):
    with pytest.raises(ConfigurationError, match=f"{name} must be non-negative; got -1"):
        Cluster(APP, **{name: -1})


@pytest.mark.parametrize("keywords, message", [
    ({"max_restarts": -1}, "max_restarts must be non-negative"),
    ({"backoff_factor": 0.5}, "backoff_factor must be at least 1"),
    ({"port": 70000}, "port must be between 0 and 65535"),
    ({"balance": "random"}, "balance must be one of"),
    ({"start_method": "teleport"}, "start_method 'teleport' is not available here"),
])
def test_each_setting_is_checked_by_its_own_declaration(keywords, message):
    with pytest.raises(ConfigurationError, match=message):
        ClusterSettings(**keywords)
    with pytest.raises(ConfigurationError, match=message):
        Cluster(APP, **keywords)


def test_the_heartbeat_interval_shrinks_with_a_short_heartbeat_timeout():
    assert ClusterSettings().heartbeat_interval == 1.0
    assert ClusterSettings(heartbeat_timeout=0.4).heartbeat_interval == pytest.approx(0.1)
    assert ClusterSettings(heartbeat_timeout=0).heartbeat_interval == 1.0  # 0: the check is off, beats go on


def test_serve_options_default_to_cluster_defaults_except_the_fixed_port():
    args = serve_parser().parse_args([APP])
    chosen = from_arguments(args)
    defaults = {d.name: d.default for d in declared() if d.flags}
    assert chosen == {**defaults, "port": 8000}
    assert ClusterSettings(**chosen) == dataclasses.replace(ClusterSettings(), port=8000)


def test_serve_options_are_read_into_the_settings_they_declare():
    args = serve_parser().parse_args([APP, "-w", "3", "--graceful-timeout", "2.5", "--start-method", "spawn",
                                      "--balance", "round-robin"])
    chosen = from_arguments(args)
    assert (chosen["workers"], chosen["graceful_timeout"]) == ("3", 2.5)
    assert (chosen["start_method"], chosen["balance"]) == ("spawn", "round-robin")


def test_serve_help_states_each_default_as_it_really_is():
    result = subprocess.run([sys.executable, "-m", "labkit", "serve", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split("options:")[1].split())  # the option list, not the usage line

    def default_of(option: str) -> str:
        return re.search(rf"{option} \S+ .*?\(default ([^)]*)\)", text).group(1)

    assert default_of("--start-method") == safe_start_method()
    assert default_of("--port") == "8000"
    assert default_of("--graceful-timeout") == "10"
    assert default_of("--heartbeat-timeout") == "30"
    assert default_of("--workers") == "max"


def test_a_bad_setting_on_the_command_line_is_one_line_and_exit_status_2():
    result = subprocess.run([sys.executable, "-m", "labkit", "serve", APP, "--graceful-timeout", "-1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "labkit serve: graceful_timeout must be non-negative; got -1.0"


def test_settings_are_plain_data_that_compare_by_value():
    assert ClusterSettings(graceful_timeout=1) == ClusterSettings(graceful_timeout=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ClusterSettings().graceful_timeout = 1  # type: ignore[misc]


# ================================================================== labkit grade's settings


def grade_help() -> str:
    from labkit.cli import _grade

    parser = argparse.ArgumentParser(prog="labkit grade")
    _grade.configure(parser)
    return " ".join(parser.format_help().split("options:")[1].split())


def test_grade_help_states_the_defaults_the_grader_really_uses():
    from labkit.grading._engine import DEFAULT_CELL_TIMEOUT
    from labkit.grading.grade import BUDGET_CELLS, MEMORY_SHARE

    text = grade_help()
    assert f"seconds one cell may run (default: {DEFAULT_CELL_TIMEOUT})" in text
    assert f"(default: {BUDGET_CELLS} cell timeouts)" in text
    assert f"(default: {MEMORY_SHARE:.0%} of the machine's" in text


def test_grade_options_become_the_settings_they_declare():
    from labkit.cli import _grade
    from labkit.grading.grade import GradeSettings

    parser = argparse.ArgumentParser()
    _grade.configure(parser)
    args = parser.parse_args(["x.ipynb", "--timeout", "5", "--memory-limit", "300", "--jobs", "2"])
    settings = GradeSettings(**{name: getattr(args, name) for name, _, _ in _grade._options()})
    assert (settings.timeout, settings.memory_limit, settings.jobs, settings.budget) == (5, 300 * 2**20, 2, None)
    defaults = parser.parse_args(["x.ipynb"])
    assert (defaults.timeout, defaults.jobs, defaults.memory_limit) == (GradeSettings().timeout, "max", None)


@pytest.mark.parametrize("option, value, complaint", [
    ("--timeout", "0", "the cell timeout must be at least 1 second, got 0"),
    ("--jobs", "some", "expected 'max' or a whole number, got 'some'"),
    ("--memory-limit", "-5", "expected at least 1, got -5"),
])
def test_a_bad_grade_option_is_refused_by_its_declaration_with_usage_status(option, value, complaint, capsys):
    from labkit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["grade", "x.ipynb", option, value])
    assert exc.value.code == 2 and complaint in capsys.readouterr().err


def test_grade_options_that_do_not_fit_together_are_one_line_and_status_2(tmp_path):
    (tmp_path / "alice.ipynb").write_text("{}")
    result = subprocess.run([sys.executable, "-m", "labkit", "grade", str(tmp_path / "alice.ipynb"), "--solutions",
                             str(SOLUTIONS), "--timeout", "60", "--submission-timeout", "10", "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "labkit grade: the submission budget (10 s) must be at least one cell timeout (60 s)")
    assert "Traceback" not in result.stderr


def test_the_engine_refuses_a_cell_timeout_under_a_second_when_its_settings_are_made():
    from labkit.grading._engine import EngineSettings

    with pytest.raises(ConfigurationError, match="at least 1 second"):
        EngineSettings(timeout=0)
