"""Builds fastserver; with FASTSERVER_NO_EXTENSIONS=1, the pure-Python package only."""

import os

from setuptools import setup


def _pure_requested() -> bool:
    return os.environ.get("FASTSERVER_NO_EXTENSIONS", "") not in ("", "0")


def _extensions() -> list:
    if _pure_requested() or not os.path.exists(os.path.join("fastserver", "_core.pyx")):
        return []
    raise NotImplementedError("the cython core is not written yet")


setup(ext_modules=_extensions())
