"""The labkit command: doctor, usage errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from labkit.cli import main


def test_doctor_prints_the_cores_and_the_start_method(capsys):
    assert main(["doctor", "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "Usable cores" in out
    assert "Start method" in out
    assert "jupyterlab" in out


def test_doctor_json_has_measured_parallelism(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cores"]["usable"] >= 1
    assert 0 < report["parallelism"]["delivered"] <= report["parallelism"]["asked"]


def test_an_unknown_option_prints_usage_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--bogus"])
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2


def test_python_dash_m_labkit_is_the_command():
    result = subprocess.run([sys.executable, "-m", "labkit", "doctor", "--no-measure"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    assert "Usable cores" in result.stdout


def test_doctor_names_the_start_method_labkit_uses_and_honours_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("LABKIT_START_METHOD", "spawn")
    assert main(["doctor", "--no-measure", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labkit_start_method"] == "spawn"


def test_a_bad_start_method_in_the_environment_is_reported_not_a_crash(capsys, monkeypatch):
    monkeypatch.setenv("LABKIT_START_METHOD", "teleport")
    assert main(["doctor", "--no-measure"]) == 0
    assert "LABKIT_START_METHOD='teleport' is not a start method available here" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    assert "names no method available here" in " ".join(capsys.readouterr().out.split())
