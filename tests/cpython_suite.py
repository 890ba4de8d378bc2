"""Run one of the interpreter's own test modules with fastserver installed as
``socketserver``.

    python tests/cpython_suite.py test_socketserver [test_httpservers ...]

fastserver is loaded under the module name ``socketserver`` before the test
module is imported, so every ``import socketserver`` in the test and in the
stdlib servers it drives (http.server, xmlrpc.server, wsgiref, logging.config)
gets fastserver. The backend follows FASTSERVER_NO_EXTENSIONS as usual; the
first line printed names it. Exits non-zero when any test fails.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import unittest


def install_as_socketserver() -> object:
    """Load the fastserver package under the name ``socketserver``."""
    spec = importlib.util.find_spec("fastserver")
    if spec is None or spec.origin is None:
        raise SystemExit("fastserver is not importable")
    alias = importlib.util.spec_from_file_location(
        "socketserver", spec.origin,
        submodule_search_locations=[os.path.dirname(spec.origin)])
    assert alias is not None and alias.loader is not None
    module = importlib.util.module_from_spec(alias)
    sys.modules["socketserver"] = module
    alias.loader.exec_module(module)
    return module


def main(names: list[str]) -> int:
    module = install_as_socketserver()
    print("socketserver ->", module.__file__, "backend:", module.backend, flush=True)
    suite = unittest.TestSuite()
    for name in names:
        test_module = importlib.import_module("test." + name)
        assert sys.modules["socketserver"] is module
        suite.addTests(unittest.defaultTestLoader.loadTestsFromModule(test_module))
    result = unittest.TextTestRunner(verbosity=1).run(suite)
    if result.testsRun == 0:
        print("no tests ran", file=sys.stderr)
        return 1
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["test_socketserver"]))
