"""The public API: complete, documented, and free of import-time side effects."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import types

import labkit

MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(labkit.__path__, "labkit.")
    if not name.rsplit(".", 1)[-1].startswith("_") and name != "labkit.apps"
) + ["labkit.apps"]


def test_every_name_in_all_is_importable_from_labkit():
    for name in labkit.__all__:
        assert getattr(labkit, name) is not None, name


def test_every_public_name_of_every_module_is_in_its_all_and_documented():
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        assert module.__doc__, f"{module_name} has no module docstring"
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{module_name} has no __all__"
        for name in exported:
            obj = getattr(module, name)
            if issubclass(type(obj), types.GenericAlias):
                continue  # a type alias such as Callable[[int], None] (a class, says 3.10's inspect)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                assert obj.__doc__, f"{module_name}.{name} has no docstring"
                if inspect.isclass(obj):
                    for attr, member in vars(obj).items():
                        if not attr.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
                            assert member.__doc__, f"{module_name}.{name}.{attr} has no docstring"


def test_errors_share_one_root_and_resemble_builtins():
    assert issubclass(labkit.ConfigurationError, (labkit.LabkitError, ValueError))
    assert issubclass(labkit.NoRunningLoopError, RuntimeError)
    assert issubclass(labkit.ServerStartError, labkit.LabkitError)


def test_importing_labkit_has_no_side_effects_and_loads_no_heavy_modules():
    code = (
        "import signal, sys, atexit\n"
        "before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}\n"
        "import labkit\n"
        "after = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}\n"
        "assert before == after, 'signal handlers changed'\n"
        "heavy = [m for m in ('tornado', 'matplotlib', 'ipywidgets', 'numpy', 'cryptography') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('clean')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "clean", result.stderr


def test_lazy_names_resolve_to_their_modules():
    from labkit.apps import AppServer

    assert labkit.AppServer is AppServer
    assert labkit.plots.__name__ == "labkit.plots"


def test_the_old_import_paths_of_the_demo_apps_keep_working():
    # Exercises handed out before the demo had a package of its own import these names.
    import labkit._demo_combined
    import labkit._demo_faulty
    import labkit.demo.combined
    import labkit.demo.faulty
    from labkit.apps import load_app

    assert labkit._demo_faulty is labkit.demo.faulty
    assert labkit._demo_combined is labkit.demo.combined
    assert type(load_app("labkit.apps:demo_app")).__name__ == "DemoApp"
    assert type(load_app("labkit._demo_faulty:flaky_app")).__name__ == "DemoApp"


def test_the_cluster_worker_loads_an_app_without_importing_the_demo():
    code = (
        "import sys\n"
        "from labkit.apps import load_app\n"
        "import labkit.cluster._worker\n"
        "assert 'labkit.demo' not in sys.modules, 'the demo was imported'\n"
        "print('clean')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "clean", result.stderr
