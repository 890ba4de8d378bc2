# cython: language_level=3
"""The Cython core: serve loop, stream reader/writer and datagram receive.

One of the two implementations of the interface in ``fastserver._contract``,
which documents it and holds the policy both share; the other is the
pure-Python ``fastserver._pure``, which this module never imports. The
contracts of the C side (fields, locking, call order) are in ``_core.pxd``;
every POSIX declaration is in ``includes/system.pxd`` and every platform
difference in ``csrc/compat.h``.

The source is split by concern:

- ``_cy/sysio.pxi``: syscalls with timeouts, EINTR and errors, the
  socketmodule.c way; address formatting.
- ``_cy/loop.pxi``: ServeLoop.
- ``_cy/accept.pxi``: accept().
- ``_cy/datagram.pxi``: DatagramReceiver, sendto(), handle_datagram().
- ``_cy/dgram_serve.pxi``: the loop's step for a ready server, UDPServer's
  request path in C.
- ``_cy/dgram_files.pxi``: DatagramFile, a datagram handler's rfile and wfile.
- ``_cy/tls_io.pxi``: receive and send on an ssl.SSLSocket, through its
  _ssl object.
- ``_cy/writer.pxi``: SocketWriter, CoalescingWriter.
- ``_cy/fresh_bytes.pxi``: bytes objects filled in place (large reads).
- ``_cy/stream.pxi``: the rfile (StreamReader) and open_stream().
"""

cimport cython
from cpython.buffer cimport (PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release,
                             PyObject_GetBuffer, PyBuffer_IsContiguous)
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from cpython.number cimport PyIndex_Check, PyNumber_AsSsize_t
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.limits cimport INT_MAX
from libc.stdint cimport int64_t

from fastserver.includes.system cimport *

import errno as _errno
import io as _io
import _socket as _c_socket
import socket as _socket
import sys as _sys
import threading as _threading

from fastserver import _contract
from fastserver._contract import (BACKOFF_FIRST, BACKOFF_MAX, RESOURCE_ERRNOS,
                                  AcceptBackoff as _AcceptBackoff,
                                  closed_socket_error as _closed_socket_error,
                                  poll_ms as _poll_ms)
from fastserver._sockfile import (_BLOCKING_ERRNOS, keeps_tls_methods as _keeps_tls_methods,
                                  open_file_stream as _open_file_stream)

__all__ = list(_contract.INTERFACE)

BACKEND = "cython"

include "_cy/sysio.pxi"
include "_cy/loop.pxi"
include "_cy/accept.pxi"
include "_cy/dgram_files.pxi"
include "_cy/datagram.pxi"
include "_cy/dgram_serve.pxi"
include "_cy/tls_io.pxi"
include "_cy/writer.pxi"
include "_cy/fresh_bytes.pxi"
include "_cy/stream.pxi"

# The pure writers and rfile are io.BufferedIOBase subclasses; so are ours.
_io.BufferedIOBase.register(SocketWriter)
_io.BufferedIOBase.register(CoalescingWriter)
_io.BufferedIOBase.register(StreamReader)
# io.BytesIO is one too.
_io.BufferedIOBase.register(DatagramFile)
