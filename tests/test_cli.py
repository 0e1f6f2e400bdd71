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
