"""Benchmarks of implicit-kernels (``pytest bench/``) and their report
(``python -m bench.report results.json``); see ``bench/cases.py`` for the case grid and
``bench/timing.py`` for the protocol.

Being a package also gives ``bench/conftest.py`` the module name ``bench.conftest``, so
it never clashes with ``tests/conftest.py`` (imported as ``conftest``) when both
directories run in one pytest invocation.
"""
