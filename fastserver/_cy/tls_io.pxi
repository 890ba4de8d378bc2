# Receive and send on an ssl.SSLSocket without its Python layers.
#
# socket.SocketIO.readinto() reaches OpenSSL through three Python frames
# (SocketIO.readinto -> SSLSocket.recv_into -> SSLSocket.read) and a write
# through two more (SSLSocket.sendall -> SSLSocket.send) and socketserver's
# _SocketWriter.write. Without them the tls-pingpong bench went from 45.6k
# to 24.3k instructions per request (callgrind, the server's user space;
# the stdlib's: 45.4k). What they do for a socket whose class keeps them
# is small, and is done here: call the _ssl object's read()/write() (which
# release the GIL, honour the socket's timeout and retry EINTR themselves),
# and turn a ragged EOF into 0 as read() does.
#
# The _ssl object is looked up on every call: unwrap() and close() set it to
# None, and then SSLSocket's methods act as a plain socket's, so we call
# them.

cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)
    enum:
        PyBUF_READ
        PyBUF_WRITE

cdef object _SSLError = None         # ssl's, once an SSLSocket was seen
cdef object _SSL_ERROR_EOF = None


cdef bint _tls_drivable(object sock) except -1:
    """Whether sock is an ssl.SSLSocket that keeps the methods SocketIO
    and sendall() would call (_sockfile.keeps_tls_methods, the pure core's
    rule too): then _tls_recv()/_tls_sendall() do what they do. Once per
    stream."""
    global _SSLError, _SSL_ERROR_EOF
    if type(sock) is _SocketType or not _keeps_tls_methods(sock):
        return False
    if _SSLError is None:
        ssl = _sys.modules["ssl"]
        _SSL_ERROR_EOF = ssl.SSL_ERROR_EOF
        _SSLError = ssl.SSLError
    return True


cdef Py_ssize_t _tls_recv(object sock, char *buf, Py_ssize_t n) except -1:
    """sock.recv_into(buf[:n]) for a socket _tls_drivable() vouched for;
    _WOULD_BLOCK where SocketIO.readinto would return None."""
    cdef object view = PyMemoryView_FromMemory(buf, n, PyBUF_WRITE)
    try:
        sslobj = sock._sslobj
        if sslobj is None or n == 0:
            # A plain socket's receive, or recv_into()'s reading of an empty
            # buffer: the method itself.
            return sock.recv_into(view)
        try:
            return sslobj.read(n, view)
        except _SSLError as exc:
            if exc.args[0] == _SSL_ERROR_EOF and sock.suppress_ragged_eofs:
                return 0
            raise
    except OSError as exc:
        if exc.errno in _BLOCKING_ERRNOS:
            return _WOULD_BLOCK
        raise
    finally:
        view.release()


cdef int _tls_sendall(object sock, const char *buf, Py_ssize_t n) except -1:
    """sock.sendall(buf[:n]) for a socket _tls_drivable() vouched for."""
    cdef Py_ssize_t sent = 0
    if n == 0:
        return 0
    view = PyMemoryView_FromMemory(<char *>buf, n, PyBUF_READ)
    try:
        sslobj = sock._sslobj
        if sslobj is None:
            sock.sendall(view)
            return 0
        # write() sends all of it unless the socket is non-blocking; the
        # loop is sendall()'s, for a partial write all the same.
        while True:
            sent += <Py_ssize_t>sslobj.write(view[sent:] if sent else view)
            if sent >= n:
                return 0
            sslobj = sock._sslobj
            if sslobj is None:
                sock.sendall(view[sent:])
                return 0
    finally:
        view.release()
