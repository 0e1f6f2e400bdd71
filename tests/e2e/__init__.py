"""End-to-end tests: the labs run in JupyterLab in a real (headless) Chromium.

A package so that this folder's ``conftest.py`` does not shadow ``tests/conftest.py``, which other
test modules import as ``conftest``.
"""
