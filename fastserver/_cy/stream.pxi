# The rfile of a StreamRequestHandler (StreamReader) and open_stream().
#
# StreamReader is io.BufferedReader over socket.SocketIO, fused: the same
# buffer state machine (see _core.pxd), the same results, the same
# exceptions and the same data lost to an exception, for any chunking of the
# input. Each method below names the BufferedReader routine it mirrors.

cdef Py_ssize_t _DEFAULT_BUFFER_SIZE = _io.DEFAULT_BUFFER_SIZE
# RawIOBase.readall() reads in chunks of this size.
cdef enum:
    _READALL_CHUNK = 8192


cdef Py_ssize_t _optional_size(object size) except? -2:
    """An int or None (-1), with io's error for anything else."""
    if size is None:
        return -1
    if not PyIndex_Check(size):
        raise TypeError("argument should be integer or None, not '%s'"
                        % _type_name(size).decode())
    return PyNumber_AsSsize_t(size, OverflowError)


cdef inline object _closed_error(str what):
    return ValueError(what + " of closed file")


@cython.final
@cython.freelist(32)
cdef class StreamReader:
    """See fastserver._contract.StreamReader."""

    def __cinit__(self):
        self._lock = PyThread_allocate_lock()
        if self._lock == NULL:
            raise MemoryError()
        self._read_end = -1

    def __init__(self, *args, **kwargs):
        raise TypeError("StreamReader objects are made by open_stream()")

    def __dealloc__(self):
        PyMem_Free(self._buffer)
        if self._lock != NULL:
            PyThread_free_lock(self._lock)

    def __del__(self):
        if not self._closed:
            try:
                self.close()
            except Exception:
                pass

    @staticmethod
    cdef StreamReader new(object sock, Py_ssize_t size, CoalescingWriter writer,
                          bint tls):
        cdef StreamReader self = StreamReader.__new__(StreamReader)
        self._tls = tls
        self._buffer = <char *>PyMem_Malloc(<size_t>size)
        if self._buffer == NULL:
            raise MemoryError()
        self._buffer_size = size
        self._writer = writer
        # As makefile(): sock.close() keeps the descriptor until we close.
        sock._io_refs += 1
        self._sock = sock
        return self

    # --- the lock (BufferedReader's ENTER_BUFFERED) -------------------------

    cdef int _enter(self) except -1:
        cdef unsigned long me = PyThread_get_thread_ident()
        if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
            if self._owner == me:
                raise RuntimeError("reentrant call inside %r" % (self,))
            with nogil:
                PyThread_acquire_lock(self._lock, WAIT_LOCK)
        self._owner = me
        if self._closed:
            # Closed by another thread while we waited.
            self._leave()
            raise ValueError("I/O operation on closed file.")
        return 0

    cdef void _leave(self) noexcept:
        self._owner = 0
        PyThread_release_lock(self._lock)

    cdef Py_ssize_t _readahead(self):
        return self._read_end - self._pos if self._read_end != -1 else 0

    # --- the raw layer (SocketIO.readinto, _bufferedreader_raw_read) --------

    cdef Py_ssize_t _raw_read(self, char *start, Py_ssize_t length) except -1:
        cdef CoalescingWriter writer = self._writer
        cdef Py_ssize_t n
        if writer is not None and writer._len and not writer._closed:
            writer.flush()
        if self._timed_out:
            raise OSError("cannot read from timed out object")
        try:
            if self._tls:
                n = _tls_recv(self._sock, start, length)
            else:
                n = _sock_recv(self._sock, start, length)
        except _socket_timeout:
            self._timed_out = True
            raise
        # Run signal handlers between receives, as the eval loop does after
        # SocketIO.readinto returns: a signal that arrived during a recv
        # that still got data is handled now, not after the whole read.
        PyErr_CheckSignals()
        return n

    cdef Py_ssize_t _fill_buffer(self) except -1:
        cdef Py_ssize_t start = self._read_end if self._read_end != -1 else 0
        cdef Py_ssize_t n = self._raw_read(self._buffer + start,
                                           self._buffer_size - start)
        if n <= 0:
            return n
        self._read_end = start + n
        return n

    # --- read ----------------------------------------------------------------

    def read(self, size=-1):
        cdef Py_ssize_t n = _optional_size(size)
        cdef object res
        if n < -1:
            raise ValueError("read length must be non-negative or -1")
        if self._closed:
            raise _closed_error("read")
        if n != -1 and n <= self._readahead():
            res = PyBytes_FromStringAndSize(self._buffer + self._pos, n)
            self._pos += n
            return res
        self._enter()
        try:
            if n == -1:
                return self._read_all()
            return self._read_generic(n)
        finally:
            self._leave()

    cdef object _read_generic(self, Py_ssize_t n):
        # _bufferedreader_read_generic
        cdef Py_ssize_t current = self._readahead()
        cdef PyObject *res
        if n <= current:
            res_bytes = PyBytes_FromStringAndSize(self._buffer + self._pos, n)
            self._pos += n
            return res_bytes
        res = _fresh_bytes(n)
        try:
            n = self._read_generic_into(_fresh_data(res), n, current)
        except BaseException:
            _fresh_drop(res)
            raise
        if n == _WOULD_BLOCK:
            _fresh_drop(res)
            return None
        return _fresh_finish(res, n)

    cdef Py_ssize_t _read_generic_into(self, char *out, Py_ssize_t n,
                                       Py_ssize_t current) except -1:
        """The bytes _read_generic() returns, written to out: their number,
        or _WOULD_BLOCK for None."""
        cdef Py_ssize_t remaining = n, written = 0, r
        if current > 0:
            memcpy(out, self._buffer + self._pos, <size_t>current)
            remaining -= current
            written += current
            self._pos += current
        self._read_end = -1
        while remaining > 0:
            # Whole blocks straight into the result; the tail via the buffer.
            r = self._buffer_size * (remaining // self._buffer_size)
            if r == 0:
                break
            r = self._raw_read(out + written, r)
            if r == 0 or r == _WOULD_BLOCK:
                if r == 0 or written > 0:
                    return written
                return _WOULD_BLOCK
            remaining -= r
            written += r
        self._pos = 0
        self._read_end = 0
        while remaining > 0 and self._read_end < self._buffer_size:
            r = self._fill_buffer()
            if r == 0 or r == _WOULD_BLOCK:
                if r == 0 or written > 0:
                    return written
                return _WOULD_BLOCK
            if remaining > r:
                memcpy(out + written, self._buffer + self._pos, <size_t>r)
                written += r
                self._pos += r
                remaining -= r
            else:
                memcpy(out + written, self._buffer + self._pos, <size_t>remaining)
                written += remaining
                self._pos += remaining
                remaining = 0
        return written

    cdef object _read_all(self):
        # _bufferedreader_read_all over RawIOBase.readall(); the chunks
        # land in the result itself, grown as needed.
        cdef Py_ssize_t current = self._readahead()
        cdef Py_ssize_t total = 0, cap = 0, r
        cdef PyObject *acc = NULL
        data = None
        if current:
            data = PyBytes_FromStringAndSize(self._buffer + self._pos, current)
            self._pos += current
        self._read_end = -1
        try:
            while True:
                if cap - total < _READALL_CHUNK:
                    cap = max(2 * cap, total + _READALL_CHUNK)
                    _fresh_grow(&acc, cap)
                r = self._raw_read(_fresh_data(acc) + total, _READALL_CHUNK)
                if r == 0 or r == _WOULD_BLOCK:
                    break
                total += r
        except BaseException:
            _fresh_drop(acc)
            raise
        if r == _WOULD_BLOCK and total == 0:
            _fresh_drop(acc)
            tail = None
        else:
            tail = _fresh_finish(acc, total)
        if current == 0:
            return tail
        if tail is not None:
            return data + tail
        return data

    def read1(self, Py_ssize_t size=-1):
        cdef Py_ssize_t n = size, have, r
        cdef PyObject *res
        if n < 0:
            n = self._buffer_size
        if self._closed:
            raise _closed_error("read")
        if n == 0:
            return b""
        have = self._readahead()
        if have > 0:
            n = min(have, n)
            buffered = PyBytes_FromStringAndSize(self._buffer + self._pos, n)
            self._pos += n
            return buffered
        self._enter()
        try:
            self._read_end = -1
            if n <= self._buffer_size:
                # The reset buffer is free: read into it, copy what came.
                r = self._raw_read(self._buffer, n)
                if r == _WOULD_BLOCK:
                    r = 0
                return PyBytes_FromStringAndSize(self._buffer, r)
            # Larger than the buffer: straight into the result.
            res = _fresh_bytes(n)
            try:
                r = self._raw_read(_fresh_data(res), n)
            except BaseException:
                _fresh_drop(res)
                raise
            if r == _WOULD_BLOCK:
                r = 0
            return _fresh_finish(res, r)
        finally:
            self._leave()

    def peek(self, Py_ssize_t size=0):
        cdef Py_ssize_t have, r
        if self._closed:
            raise _closed_error("peek")
        self._enter()
        try:
            have = self._readahead()
            if have > 0:
                return PyBytes_FromStringAndSize(self._buffer + self._pos, have)
            self._read_end = -1
            r = self._fill_buffer()
            if r == _WOULD_BLOCK:
                r = 0
            self._pos = 0
            return PyBytes_FromStringAndSize(self._buffer, r)
        finally:
            self._leave()

    # --- readinto ------------------------------------------------------------

    def readinto(self, b):
        return self._readinto(b, False)

    def readinto1(self, b):
        return self._readinto(b, True)

    cdef object _readinto(self, object b, bint once):
        # _buffered_readinto_generic
        cdef Py_buffer view
        cdef char *dst
        cdef Py_ssize_t n, written = 0, remaining
        if _get_buffer_or_clear(b, &view, PyBUF_WRITABLE) < 0:
            raise TypeError("%s() argument must be read-write bytes-like object, not %s"
                            % ("readinto1" if once else "readinto",
                               "None" if b is None else _type_name(b).decode()))
        try:
            if not PyBuffer_IsContiguous(&view, b'C'):
                raise TypeError("%s() argument must be read-write bytes-like object, not %s"
                                % ("readinto1" if once else "readinto",
                                   _type_name(b).decode()))
            if self._closed:
                raise _closed_error("readinto")
            dst = <char *>view.buf
            n = self._readahead()
            if n > 0:
                if n >= view.len:
                    memcpy(dst, self._buffer + self._pos, <size_t>view.len)
                    self._pos += view.len
                    return view.len
                memcpy(dst, self._buffer + self._pos, <size_t>n)
                self._pos += n
                written = n
            self._enter()
            try:
                self._read_end = -1
                self._pos = 0
                remaining = view.len - written
                while remaining > 0:
                    if remaining > self._buffer_size:
                        # Larger than the buffer: straight into the caller's.
                        n = self._raw_read(dst + written, remaining)
                    elif not (once and written):
                        n = self._fill_buffer()
                        if n > 0:
                            if n > remaining:
                                n = remaining
                            memcpy(dst + written, self._buffer + self._pos, <size_t>n)
                            self._pos += n
                            written += n
                            remaining -= n
                            continue
                    else:
                        n = 0
                    if n == 0 or (n == _WOULD_BLOCK and written > 0):
                        break
                    if n == _WOULD_BLOCK:
                        return None
                    written += n
                    remaining -= n
                    if once:
                        break
                return written
            finally:
                self._leave()
        finally:
            PyBuffer_Release(&view)

    # --- lines ---------------------------------------------------------------

    def readline(self, size=-1):
        return self._readline(_optional_size(size))

    cdef object _readline(self, Py_ssize_t limit):
        # _buffered_readline. The fast path is a memchr over the buffer and
        # the result bytes: no other Python call, no lock.
        cdef Py_ssize_t n
        cdef char *start
        cdef char *s
        if self._closed:
            raise _closed_error("readline")
        n = self._readahead()
        if limit >= 0 and n > limit:
            n = limit
        start = self._buffer + self._pos
        s = <char *>memchr(start, b'\n', <size_t>n)
        if s != NULL:
            res = PyBytes_FromStringAndSize(start, s - start + 1)
            self._pos += s - start + 1
            return res
        if n == limit:
            res = PyBytes_FromStringAndSize(start, n)
            self._pos += n
            return res
        self._enter()
        try:
            return self._readline_slow(limit)
        finally:
            self._leave()

    cdef object _readline_slow(self, Py_ssize_t limit):
        # The common line, read whole by one receive into the empty buffer,
        # is returned as it is: the list of chunks only exists for a second
        # chunk.
        cdef Py_ssize_t n = self._readahead()
        cdef char *s
        cdef object first = None
        cdef list chunks = None
        cdef bint done
        if limit >= 0 and n > limit:
            n = limit
        if n > 0:
            first = PyBytes_FromStringAndSize(self._buffer + self._pos, n)
            self._pos += n
            if limit >= 0:
                limit -= n
        while True:
            self._read_end = -1
            n = self._fill_buffer()
            if n <= 0:
                break
            if limit >= 0 and n > limit:
                n = limit
            s = <char *>memchr(self._buffer, b'\n', <size_t>n)
            if s != NULL:
                self._pos = s - self._buffer + 1
                chunk = PyBytes_FromStringAndSize(self._buffer, self._pos)
                done = True
            else:
                chunk = PyBytes_FromStringAndSize(self._buffer, n)
                done = n == limit
                if done:
                    self._pos = n
            if first is None:
                first = chunk
            elif chunks is None:
                chunks = [first, chunk]
            else:
                chunks.append(chunk)
            if done:
                break
            if limit >= 0:
                limit -= n
        if chunks is not None:
            return b"".join(chunks)
        return first if first is not None else b""

    def __iter__(self):
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        return self

    def __next__(self):
        line = self._readline(-1)
        if not line:
            raise StopIteration
        return line

    def readlines(self, hint=-1):
        cdef Py_ssize_t limit = _optional_size(hint), length = 0
        if limit <= 0:
            return list(self)
        result = []
        for line in self:
            result.append(line)
            if len(line) > limit - length:
                break
            length += len(line)
        return result

    # --- the rest of BufferedReader ------------------------------------------

    def close(self):
        if self._closed:
            return
        self._enter()
        try:
            self._closed = True
            self._read_end = -1
            PyMem_Free(self._buffer)
            self._buffer = NULL
            sock, self._sock = self._sock, None
            self._writer = None
            sock._decref_socketios()
        finally:
            self._leave()

    @property
    def closed(self):
        return self._closed

    @property
    def name(self):
        return -1 if self._closed else self._sock.fileno()

    @property
    def mode(self):
        return "rb"

    def __repr__(self):
        return "<%s name=%r>" % (_type_name(self).decode(), self.name)

    def fileno(self):
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        return self._sock.fileno()

    def readable(self):
        if self._closed:
            raise ValueError("I/O operation on closed socket.")
        return True

    def seekable(self):
        if self._closed:
            raise ValueError("I/O operation on closed socket.")
        return False

    def writable(self):
        return False

    def isatty(self):
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        return False

    def flush(self):
        if self._closed:
            raise ValueError("I/O operation on closed file.")

    def tell(self):
        raise _UnsupportedOperation("seek")

    def seek(self, pos, whence=0):
        if self._closed:
            raise _closed_error("seek")
        raise _UnsupportedOperation("File or stream is not seekable.")

    def truncate(self, pos=None):
        raise _UnsupportedOperation("truncate")

    def write(self, b):
        raise _UnsupportedOperation("write")

    def writelines(self, lines):
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        raise _UnsupportedOperation("write")

    def detach(self):
        raise _UnsupportedOperation("detach")

    def __enter__(self):
        if self._closed:
            raise ValueError("I/O operation on closed file.")
        return self

    def __exit__(self, *args):
        self.close()



def open_stream(sock, rbufsize, wbufsize, coalesce_limit):
    """See fastserver._contract.Core.open_stream."""
    cdef Py_ssize_t size
    cdef CoalescingWriter writer
    cdef bint tls = False
    cdef bint ours = _drivable(sock, _STREAM_METHODS)
    if rbufsize is None:
        rbufsize = -1
    if not ours:
        tls = ours = _tls_drivable(sock)
    if rbufsize == 0 or not ours or sock.gettimeout() == 0.0:
        # Unbuffered, non-blocking, or a socket that is not ours to drive
        # (overridden recv/send, on a plain socket or an SSLSocket): the
        # socket module's files.
        return _open_file_stream(sock, rbufsize, wbufsize, coalesce_limit,
                                 SocketWriter, CoalescingWriter)
    size = _DEFAULT_BUFFER_SIZE if rbufsize < 0 else rbufsize
    if coalesce_limit <= 0:
        rfile = StreamReader.new(sock, size, None, tls)
        if wbufsize == 0:
            return rfile, SocketWriter.new(sock, tls)
        return rfile, sock.makefile("wb", wbufsize)
    writer = CoalescingWriter.new(sock, coalesce_limit, tls)
    return StreamReader.new(sock, size, writer, tls), writer
