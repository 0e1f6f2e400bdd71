"""Old name of :mod:`labkit.demo.combined`, kept because exercises already handed out import it."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("labkit.demo.combined")
