# SocketWriter and CoalescingWriter: wfile. See _core.pxd.

_UnsupportedOperation = _io.UnsupportedOperation
cdef Py_ssize_t _COALESCE_KEEP = _contract.COALESCE_KEEP


@cython.freelist(32)
cdef class _WriterBase:
    # io.BufferedIOBase's behaviour for a write-only stream, as the pure
    # writers inherit it.

    def __init__(self, sock):
        self._sock = sock
        self._direct = _drivable(sock, _STREAM_METHODS)
        self._tls = not self._direct and _tls_drivable(sock)

    def __del__(self):
        if not self._closed:
            try:
                self.close()
            except Exception:
                pass

    cdef int _sendall(self, const char *data, Py_ssize_t n) except -1:
        if self._direct:
            return _sock_sendall(self._sock, data, n)
        if self._tls:
            return _tls_sendall(self._sock, data, n)
        self._sock.sendall(PyBytes_FromStringAndSize(data, n))
        return 0

    @property
    def closed(self):
        return self._closed

    def close(self):
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True

    def flush(self):
        if self._closed:
            raise ValueError("I/O operation on closed file.")

    def writable(self):
        return True

    def readable(self):
        return False

    def seekable(self):
        return False

    def isatty(self):
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        return False

    def fileno(self):
        return self._sock.fileno()

    def writelines(self, lines):
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        for line in lines:
            self.write(line)

    def __enter__(self):
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        return self

    def __exit__(self, *args):
        self.close()

    def __iter__(self):
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        return self

    def __next__(self):
        raise _UnsupportedOperation("read")

    def read(self, size=-1):
        raise _UnsupportedOperation("read")

    def read1(self, size=-1):
        raise _UnsupportedOperation("read1")

    def readinto(self, b):
        raise _UnsupportedOperation("read")

    def readinto1(self, b):
        raise _UnsupportedOperation("read1")

    def readline(self, size=-1):
        raise _UnsupportedOperation("read")

    def readlines(self, hint=-1):
        raise _UnsupportedOperation("read")

    def detach(self):
        raise _UnsupportedOperation("detach")

    def seek(self, pos, whence=0):
        raise _UnsupportedOperation("seek")

    def tell(self):
        raise _UnsupportedOperation("seek")

    def truncate(self, pos=None):
        raise _UnsupportedOperation("truncate")


cdef class SocketWriter(_WriterBase):
    """See fastserver._contract.SocketWriter."""

    @staticmethod
    cdef SocketWriter new(object sock, bint tls):
        cdef SocketWriter self = SocketWriter.__new__(SocketWriter)
        self._sock = sock
        self._direct = not tls
        self._tls = tls
        return self

    def write(self, b):
        cdef Py_buffer view
        # No closed check, as in socketserver: the socket decides.
        if (not (self._direct or self._tls)
                or _get_buffer_or_clear(b, &view, PyBUF_SIMPLE) < 0):
            # The pure path, for its exact behaviour and errors.
            self._sock.sendall(b)
            with memoryview(b) as m:
                return m.nbytes
        try:
            self._sendall(<const char *>view.buf, view.len)
            return view.len
        finally:
            PyBuffer_Release(&view)


cdef class CoalescingWriter(_WriterBase):
    """See fastserver._contract.CoalescingWriter."""

    def __init__(self, sock, limit):
        _WriterBase.__init__(self, sock)
        self._limit = limit

    def __dealloc__(self):
        PyMem_Free(self._buf)

    @staticmethod
    cdef CoalescingWriter new(object sock, Py_ssize_t limit, bint tls):
        cdef CoalescingWriter self = CoalescingWriter.__new__(CoalescingWriter)
        self._sock = sock
        self._direct = not tls
        self._tls = tls
        self._limit = limit
        return self

    def write(self, b):
        cdef Py_buffer view
        cdef Py_ssize_t need, cap, n
        cdef char *buf
        if self._closed:
            raise ValueError("write to closed file")
        if _get_buffer_or_clear(b, &view, PyBUF_SIMPLE) < 0:
            # Raise what the pure writer raises.
            with memoryview(b) as m:
                scratch = bytearray()
                scratch += m
            raise TypeError("a bytes-like object is required, not '%s'"
                            % type(b).__name__)
        try:
            n = view.len
            if n >= self._limit:
                # Sent at once anyway: after the buffer, straight from the
                # caller's memory, without a copy.
                self._flush()
                self._sendall(<const char *>view.buf, n)
                return n
            need = self._len + n
            if need > self._cap:
                cap = max(need, 2 * self._cap, 256)
                buf = <char *>PyMem_Realloc(self._buf, <size_t>cap)
                if buf == NULL:
                    raise MemoryError()
                self._buf = buf
                self._cap = cap
            memcpy(self._buf + self._len, view.buf, <size_t>n)
            self._len = need
        finally:
            PyBuffer_Release(&view)
        if self._len >= self._limit:
            self.flush()
        return n

    def flush(self):
        if self._closed:
            raise ValueError("flush of closed file")
        self._flush()

    cdef int _flush(self) except -1:
        cdef char *data = self._buf
        cdef Py_ssize_t n = self._len, cap = self._cap
        if n == 0:
            return 0
        # Detach first: after a failed send the bytes are gone, as they
        # would be from an unbuffered wfile.
        self._buf = NULL
        self._len = self._cap = 0
        try:
            self._sendall(data, n)
        finally:
            if self._buf == NULL and cap <= _COALESCE_KEEP:
                self._buf = data
                self._cap = cap
            else:
                # Grown past the bound (or replaced meanwhile): release it.
                PyMem_Free(data)
        return 0

    @property
    def pending(self):
        return self._len

    def __sizeof__(self):
        # The coalescing buffer counts, as a bytearray's allocation does.
        return object.__sizeof__(self) + self._cap

    def close(self):
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            PyMem_Free(self._buf)
            self._buf = NULL
            self._len = self._cap = 0
