"""Builds fastserver; with FASTSERVER_NO_EXTENSIONS=1, the pure-Python package only.

The Cython core ``fastserver._core`` is built from ``fastserver/_core.pyx``
(or from the generated ``fastserver/_core.c`` of an sdist when Cython is not
installed). Switches, all environment variables:

- FASTSERVER_NO_EXTENSIONS=1: build no extension; fastserver runs pure.
- FASTSERVER_DEBUG=1: line tracing, an annotated HTML listing, C asserts
  (-UNDEBUG) and -O0 -g.
- FASTSERVER_ASAN=1: AddressSanitizer (-fsanitize=address, with debug info);
  run the tests with LD_PRELOAD=$(gcc -print-file-name=libasan.so).
- FASTSERVER_PORTABLE=1: defines FS_PORTABLE, so csrc/compat.h takes its
  POSIX fallbacks (accept() + FD_CLOEXEC, a recvmsg()/sendmsg() loop, a pipe
  waker) instead of accept4/recvmmsg/sendmmsg/eventfd, and hides those Linux
  names: the macOS/BSD code paths, built and tested on Linux.

A missing Cython (with no generated C) or a failing compiler stops the build
with a message naming FASTSERVER_NO_EXTENSIONS=1: there is no silent fallback.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

_HERE = os.path.dirname(os.path.abspath(__file__))
_PURE_HINT = ("set FASTSERVER_NO_EXTENSIONS=1 to install the pure-Python "
              "fastserver instead (same API, slower)")


def _pure_requested() -> bool:
    return os.environ.get("FASTSERVER_NO_EXTENSIONS", "") not in ("", "0")


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


class _LoudBuildExt(build_ext):
    """build_ext that names the pure opt-in when the compiler fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            raise SystemExit(
                "fastserver: building the C extension failed (%s); %s"
                % (exc, _PURE_HINT)) from exc

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            raise SystemExit(
                "fastserver: compiling %s failed (%s); %s"
                % (ext.name, exc, _PURE_HINT)) from exc


def _asking_for_requirements() -> bool:
    return bool({"egg_info", "dist_info"} & set(sys.argv[1:]))


def _extensions() -> list:
    if _pure_requested() or not os.path.exists(os.path.join(_HERE, "fastserver", "_core.pyx")):
        return []
    from setuptools import Extension

    debug = _flag("FASTSERVER_DEBUG")
    asan = _flag("FASTSERVER_ASAN")
    portable = _flag("FASTSERVER_PORTABLE")
    macros = []
    cflags = ["-Wall", "-Wextra", "-Wno-unused-parameter",
              "-Wno-missing-field-initializers"]
    ldflags = []
    directives = {
        "language_level": 3,
        "embedsignature": False,
        # Not safe without the GIL: the buffered fast paths (BufferedReader's
        # design) and ServeLoop's waker hand-off rely on it; see _core.pxd.
        "freethreading_compatible": False,
    }
    if not debug and not asan:
        # CPython's CFLAGS carry -g; a release wheel needs no debug info.
        # (An ASan build keeps it: its reports then name file and line.)
        cflags.append("-g0")
    if debug:
        directives.update(linetrace=True, profile=False)
        macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
        cflags += ["-UNDEBUG", "-O0", "-g3"]
    if asan:
        cflags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address"]
    if portable:
        macros.append(("FS_PORTABLE", "1"))

    pyx = os.path.join("fastserver", "_core.pyx")
    generated = os.path.join("fastserver", "_core.c")
    # Cython does not track the C header: listed here, a change to it
    # rebuilds the extension.
    common = dict(include_dirs=["csrc"], depends=["csrc/compat.h"], define_macros=macros,
                  extra_compile_args=cflags, extra_link_args=ldflags)
    try:
        from Cython.Build import cythonize
    except ImportError:
        if os.path.exists(os.path.join(_HERE, generated)) and not debug:
            # An sdist: the C that Cython generated when it was made.
            return [Extension("fastserver._core", [generated], **common)]
        if _asking_for_requirements():
            # The build backend runs "setup.py egg_info" to learn what to
            # install before the build; Cython is what it is about to
            # install (build_backend/), so its absence is no error yet.
            return []
        raise SystemExit("fastserver: Cython is required to build the C "
                         "extension (pip install 'Cython>=3.0.10'); "
                         + _PURE_HINT)
    from Cython.Compiler.Errors import CompileError
    try:
        return cythonize(
            [Extension("fastserver._core", [pyx], **common)],
            compiler_directives=directives,
            annotate=debug,
            include_path=["."],
            # A debug build must not reuse a release build's C, and vice versa.
            force=debug or _flag("FASTSERVER_FORCE_CYTHON"),
            quiet=not debug,
        )
    except CompileError as exc:
        raise SystemExit("fastserver: Cython failed on %s; %s" % (exc, _PURE_HINT)) from exc


setup(ext_modules=_extensions(), cmdclass={"build_ext": _LoudBuildExt})
