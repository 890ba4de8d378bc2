# Receive and send on an ssl.SSLSocket without its Python layers.
#
# socket.SocketIO.readinto() reaches OpenSSL through three Python frames
# (SocketIO.readinto -> SSLSocket.recv_into -> SSLSocket.read) and a write
# through two more (SSLSocket.sendall -> SSLSocket.send) and socketserver's
# _SocketWriter.write. Per request of the tls-pingpong bench those frames
# were a third of the server's instructions. What they do for a socket whose
# class keeps them is small, and is done here: call the _ssl object's
# read()/write() (which release the GIL, honour the socket's timeout and
# retry EINTR themselves), and turn a ragged EOF into 0 as read() does.
#
# The _ssl object is looked up on every call: unwrap() and close() set it to
# None, and then SSLSocket's methods act as a plain socket's, so we call
# them.

cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)
    enum:
        PyBUF_READ
        PyBUF_WRITE

cdef object _ssl_module = None       # ssl, once a socket showed it is imported
cdef dict _TLS_ORIGINALS = None      # the SSLSocket methods the stdlib path calls
cdef object _SSLError = None
cdef object _SSL_ERROR_EOF = None
# SocketIO.readinto's _blocking_errnos.
_BLOCKING_ERRNOS = frozenset((_errno.EAGAIN, _errno.EWOULDBLOCK))


cdef int _load_ssl(object ssl) except -1:
    global _ssl_module, _TLS_ORIGINALS, _SSLError, _SSL_ERROR_EOF
    cls = ssl.SSLSocket
    _TLS_ORIGINALS = {name: cls.__dict__[name] for name in (
        "_checkClosed", "recv_into", "read", "sendall", "send")}
    _SSLError = ssl.SSLError
    _SSL_ERROR_EOF = ssl.SSL_ERROR_EOF
    _ssl_module = ssl
    return 0


cdef bint _tls_drivable(object sock) except -1:
    """Whether sock is an ssl.SSLSocket that keeps the methods SocketIO
    and sendall() would call, on its class and on itself: then
    _tls_recv()/_tls_sendall() do what they do."""
    cls = type(sock)
    if cls is _SocketType:
        return False
    if _ssl_module is None:
        # No SSLSocket can exist before ssl is imported.
        ssl = _sys.modules.get("ssl")
        if ssl is None:
            return False
        _load_ssl(ssl)
    if not isinstance(sock, _ssl_module.SSLSocket):
        return False
    key = (cls, "tls")
    cached = _drivable_cache.get(key)
    tag = _version_tag(cls)
    if cached is None or tag == 0 or (<tuple>cached)[0] != tag:
        ok = all(getattr(cls, name, None) is method
                 for name, method in _TLS_ORIGINALS.items())
        tag = _version_tag(cls)
        cached = (tag, ok)
        if tag != 0:
            _drivable_cache[key] = cached
    if not (<tuple>cached)[1]:
        return False
    attributes = getattr(sock, "__dict__", None)
    return not attributes or not any(name in attributes for name in _TLS_ORIGINALS)


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
    cdef object view = PyMemoryView_FromMemory(<char *>buf, n, PyBUF_READ)
    cdef Py_ssize_t sent = 0
    if n == 0:
        return 0
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
