# DatagramFile: a DatagramRequestHandler's rfile and wfile. See _core.pxd.
#
# The open file's common operations run here, on the contents in C memory.
# Everything else (a closed file, an argument of an unusual type or range,
# BytesIO's other methods) goes to an io.BytesIO holding the same contents
# and position, made at that moment: it answers from then on, so its exact
# behaviour and errors are BytesIO's own.

_BytesIO = _io.BytesIO

cdef extern from "Python.h":
    # Without Cython's error check: the caller clears the error and lets
    # the BytesIO raise its own.
    Py_ssize_t _long_as_ssize "PyLong_AsSsize_t"(object obj)
    Py_ssize_t PY_SSIZE_T_MAX

cdef enum:
    _FILE_MIN_CAP = 128     # the first allocation of a written file


cdef inline bint _plain_size(object size, Py_ssize_t *out) noexcept:
    """size as read(size) takes it here: None, or an int that fits a
    Py_ssize_t (negative: no limit). False for anything else."""
    if size is None:
        out[0] = -1
        return True
    if type(size) is not int:
        return False
    out[0] = _long_as_ssize(size)
    if out[0] == -1 and PyErr_Occurred() != NULL:
        PyErr_Clear()
        return False
    return True


@cython.final
@cython.freelist(16)
@cython.auto_pickle(False)
cdef class DatagramFile:
    """See fastserver._contract.DatagramFile."""

    def __init__(self, initial_bytes=b""):
        if not self._native():
            self._materialise().__init__(initial_bytes)
            return
        self._ref = None
        self._len = self._pos = 0
        if type(initial_bytes) is bytes:
            self._set_bytes(initial_bytes)
        elif initial_bytes is not None:
            # A bytearray, a memoryview or a wrong type: BytesIO copies
            # the first and raises for the last, its own way.
            self._bio = _BytesIO(initial_bytes)

    @staticmethod
    cdef DatagramFile new(bytes data):
        cdef DatagramFile f = DatagramFile.__new__(DatagramFile)
        if data is not None:
            f._set_bytes(data)
        return f

    def __dealloc__(self):
        PyMem_Free(self._buf)

    cdef void _set_bytes(self, bytes data) noexcept:
        if PyBytes_GET_SIZE(data):
            self._ref = data
            self._len = PyBytes_GET_SIZE(data)

    cdef inline const char *_contents(self) noexcept:
        if self._ref is not None:
            return PyBytes_AS_STRING(self._ref)
        return self._buf

    cdef object _materialise(self):
        """The BytesIO that answers from now on."""
        cdef object bio
        if self._bio is not None:
            return self._bio
        if self._closed:
            bio = _BytesIO()
            bio.close()
        else:
            bio = _BytesIO(self._ref if self._ref is not None else
                           PyBytes_FromStringAndSize(self._buf, self._len))
            bio.seek(self._pos)
        if self._bio is None:   # not made meanwhile by another thread
            self._bio = bio
            self._ref = None
            PyMem_Free(self._buf)
            self._buf = NULL
            self._len = self._cap = 0
        return self._bio

    cdef inline bint _native(self) noexcept:
        return self._bio is None and not self._closed

    # --- reading ---------------------------------------------------------

    cdef Py_ssize_t _available(self, Py_ssize_t size) noexcept:
        cdef Py_ssize_t n = self._len - self._pos
        if n < 0:
            return 0
        if 0 <= size < n:
            return size
        return n

    cdef Py_ssize_t _line_length(self, Py_ssize_t size) noexcept:
        """The length of the next line (its newline included), at most size."""
        cdef Py_ssize_t n = self._available(size)
        cdef const char *start
        cdef const char *eol
        if n == 0:
            return 0
        start = self._contents() + self._pos
        eol = <const char *>memchr(start, b'\n', <size_t>n)
        return n if eol == NULL else eol - start + 1

    cdef bytes _take(self, Py_ssize_t n):
        cdef bytes result
        if n == 0:
            return b""
        if self._pos == 0 and n == self._len and self._ref is not None:
            result = self._ref   # the whole of an unwritten file: shared
        else:
            result = PyBytes_FromStringAndSize(self._contents() + self._pos, n)
        self._pos += n
        return result

    def read(self, size=-1, /):
        cdef Py_ssize_t n
        if not self._native() or not _plain_size(size, &n):
            return self._materialise().read(size)
        return self._take(self._available(n))

    def read1(self, size=-1, /):
        cdef Py_ssize_t n
        if not self._native() or not _plain_size(size, &n):
            return self._materialise().read1(size)
        return self._take(self._available(n))

    def readline(self, size=-1, /):
        cdef Py_ssize_t n
        if not self._native() or not _plain_size(size, &n):
            return self._materialise().readline(size)
        return self._take(self._line_length(n))

    def readlines(self, size=None, /):
        cdef Py_ssize_t hint, n, total = 0
        if not self._native() or not _plain_size(size, &hint):
            return self._materialise().readlines(size)
        lines = []
        while True:
            n = self._line_length(-1)
            if n == 0:
                return lines
            lines.append(self._take(n))
            total += n
            if 0 < hint <= total:
                return lines

    def readinto(self, buffer, /):
        cdef Py_buffer view
        cdef Py_ssize_t n
        if not self._native() or _get_buffer_or_clear(
                buffer, &view, PyBUF_WRITABLE) < 0:
            return self._materialise().readinto(buffer)
        try:
            # Getting a buffer may run Python code (__buffer__), which may
            # have closed this file or handed it over meanwhile.
            if not self._native() or not PyBuffer_IsContiguous(&view, b'C'):
                return self._materialise().readinto(buffer)
            n = self._available(view.len)
            if n:
                memcpy(view.buf, self._contents() + self._pos, <size_t>n)
                self._pos += n
            return n
        finally:
            PyBuffer_Release(&view)

    def __iter__(self):
        if not self._native():
            return iter(self._materialise())
        return self

    def __next__(self):
        cdef Py_ssize_t n
        if not self._native():
            return next(self._materialise())
        n = self._line_length(-1)
        if n == 0:
            raise StopIteration
        return self._take(n)

    # --- writing ---------------------------------------------------------

    cdef int _reserve(self, Py_ssize_t end) except -1:
        """Make _buf the contents, writable up to end bytes."""
        cdef Py_ssize_t cap
        cdef char *buf
        if self._ref is None and end <= self._cap:
            return 0
        cap = end if end > self._len else self._len
        if cap > self._cap:
            if cap > PY_SSIZE_T_MAX - (cap >> 3) - _FILE_MIN_CAP:
                raise OverflowError("new buffer size too large")
            # Room to grow by an eighth, as BytesIO does, so that many
            # small writes stay linear.
            cap += (cap >> 3) + _FILE_MIN_CAP
            buf = <char *>PyMem_Realloc(self._buf, <size_t>cap)
            if buf == NULL:
                raise MemoryError()
            self._buf = buf
            self._cap = cap
        if self._ref is not None:
            memcpy(self._buf, PyBytes_AS_STRING(self._ref), <size_t>self._len)
            self._ref = None
        return 0

    cdef object _write(self, object b):
        cdef Py_buffer view
        cdef Py_ssize_t n, end
        if (type(b) is bytes and self._len == 0 and self._pos == 0
                and self._ref is None):
            # The common reply: one bytes object, kept rather than copied.
            self._set_bytes(<bytes>b)
            self._pos = self._len
            return self._len
        if _get_buffer_or_clear(b, &view, PyBUF_SIMPLE) < 0:
            return self._materialise().write(b)   # and its error
        try:
            if not self._native():   # see readinto()
                return self._materialise().write(b)
            n = view.len
            if n == 0:
                return 0
            if self._pos > PY_SSIZE_T_MAX - n:
                raise OverflowError("new buffer size too large")
            end = self._pos + n
            self._reserve(end)
            if self._pos > self._len:
                memset(self._buf + self._len, 0, <size_t>(self._pos - self._len))
            memcpy(self._buf + self._pos, view.buf, <size_t>n)
            self._pos = end
            if end > self._len:
                self._len = end
            return n
        finally:
            PyBuffer_Release(&view)

    def write(self, b, /):
        if not self._native():
            return self._materialise().write(b)
        return self._write(b)

    def writelines(self, lines, /):
        if not self._native():
            return self._materialise().writelines(lines)
        for line in lines:
            # A line may have closed or materialised the file meanwhile.
            if self._native():
                self._write(line)
            else:
                self._materialise().write(line)

    cdef bytes _value(self):
        if self._ref is not None:
            return self._ref
        return PyBytes_FromStringAndSize(self._buf, self._len)

    def getvalue(self):
        if not self._native():
            return self._materialise().getvalue()
        return self._value()

    # --- position, state -------------------------------------------------

    def tell(self):
        if not self._native():
            return self._materialise().tell()
        return self._pos

    def seek(self, pos, whence=0, /):
        cdef Py_ssize_t offset, base
        if (not self._native() or type(whence) is not int
                or not _plain_size(pos, &offset) or pos is None):
            return self._materialise().seek(pos, whence)
        if whence == 0 and offset >= 0:
            base = 0
        elif whence == 1 and offset <= PY_SSIZE_T_MAX - self._pos:
            base = self._pos
        elif whence == 2 and offset <= PY_SSIZE_T_MAX - self._len:
            base = self._len
        else:
            return self._materialise().seek(pos, whence)
        offset += base
        self._pos = offset if offset > 0 else 0
        return self._pos

    @property
    def closed(self):
        if self._bio is not None:
            return self._bio.closed
        return self._closed

    def close(self):
        if self._bio is not None:
            return self._bio.close()
        self._closed = True
        self._ref = None
        PyMem_Free(self._buf)
        self._buf = NULL
        self._len = self._cap = self._pos = 0

    def flush(self):
        if not self._native():
            return self._materialise().flush()

    def readable(self):
        return True if self._native() else self._materialise().readable()

    def writable(self):
        return True if self._native() else self._materialise().writable()

    def seekable(self):
        return True if self._native() else self._materialise().seekable()

    def isatty(self):
        return False if self._native() else self._materialise().isatty()

    def __enter__(self):
        if self.closed:
            self._materialise().__enter__()   # raises, as BytesIO does
        return self

    def __exit__(self, *args):
        self.close()

    def __reduce_ex__(self, protocol):
        # Pickled, copied: as the BytesIO it stands for.
        return (_BytesIO, (), self.__getstate__())

    # --- the rest of BytesIO: its own -------------------------------------
    # Explicit methods rather than __getattr__, which would cost every
    # method call here a bound method object (CPython looks methods up
    # without one only on types with the generic attribute lookup).

    def getbuffer(self):
        return self._materialise().getbuffer()

    def truncate(self, *args):
        return self._materialise().truncate(*args)

    def readinto1(self, *args):
        return self._materialise().readinto1(*args)

    def detach(self, *args):
        return self._materialise().detach(*args)

    def fileno(self, *args):
        return self._materialise().fileno(*args)

    def __getstate__(self):
        value, pos, attributes = self._materialise().__getstate__()
        own = getattr(self, "__dict__")   # attributes set on this object
        if own:
            attributes = dict(attributes or {}, **own)
        return value, pos, attributes

    def __setstate__(self, state):
        return self._materialise().__setstate__(state)

    def _checkClosed(self, *args):
        return self._materialise()._checkClosed(*args)

    def _checkReadable(self, *args):
        return self._materialise()._checkReadable(*args)

    def _checkSeekable(self, *args):
        return self._materialise()._checkSeekable(*args)

    def _checkWritable(self, *args):
        return self._materialise()._checkWritable(*args)

    def __sizeof__(self):
        cdef Py_ssize_t size = object.__sizeof__(self) + self._cap
        if self._bio is not None:
            size += self._bio.__sizeof__()
        return size
