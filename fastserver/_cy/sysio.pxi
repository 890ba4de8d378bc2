# Syscalls with timeouts, EINTR and errors, the socketmodule.c way.
#
# Each operation is split in two:
#
# - a `noexcept nogil` function that runs the syscall, after a poll() when
#   the socket has a timeout, and loops by itself on the EAGAIN false
#   positives of a timed socket. It copies errno into *err straight after
#   the failing call and returns -1; _TIMED_OUT in *err means the deadline
#   passed. It never needs the GIL, so one release covers poll + syscall.
# - a caller holding the GIL that computes the deadline once (from the
#   socket's timeout at the start, as socketmodule.c does), fetches
#   sock.fileno() before every attempt, and on EINTR runs
#   PyErr_CheckSignals(): a handler's exception propagates, otherwise the
#   call is retried with the time left.

cdef extern from "Python.h":
    object PyUnicode_DecodeFSDefaultAndSize(const char *s, Py_ssize_t size)
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
    int PySys_Audit(const char *event, const char *format, ...) except -1
    ctypedef struct PyTypeObject:
        const char *tp_name
        unsigned long tp_flags
        unsigned int tp_version_tag
    enum:
        Py_TPFLAGS_VALID_VERSION_TAG
    ctypedef struct PyObject:
        PyTypeObject *ob_type

cdef extern from "pythread.h":
    PyThread_type_lock PyThread_allocate_lock()
    void PyThread_free_lock(PyThread_type_lock)
    int PyThread_acquire_lock(PyThread_type_lock, int mode) nogil
    void PyThread_release_lock(PyThread_type_lock) nogil
    unsigned long PyThread_get_thread_ident()
    enum:
        WAIT_LOCK
        NOWAIT_LOCK

cdef enum:
    # A pseudo errno: the deadline passed (socket.timeout).
    _TIMED_OUT = -1000
    # Return codes of the _sock_* callers besides n >= 0 and -1 (raised).
    _WOULD_BLOCK = -2

# The readiness poll() waits for, as _pure asks select.poll for it.
cdef short _POLL_READ = POLLIN | POLLPRI | POLLERR | POLLHUP

_SocketType = _socket.socket
_socket_timeout = _socket.timeout
_getdefaulttimeout = _socket.getdefaulttimeout


cdef inline const char *_type_name(object obj):
    return (<PyObject *>obj).ob_type.tp_name


cdef inline double _monotonic() noexcept nogil:
    return <double>fs_monotonic_ns() / 1e9


cdef inline int _ms_ceil(int64_t ns) noexcept nogil:
    """poll() takes whole milliseconds: round up so that we never spin."""
    cdef int64_t ms
    if ns <= 0:
        return 0
    ms = (ns + 999999) // 1000000
    return <int>ms if ms < INT_MAX else INT_MAX


cdef int64_t _timeout_ns(object sock) except -2:
    """The socket's timeout: -1 for None (blocking), 0 for non-blocking."""
    return _timeout_to_ns(sock.gettimeout())


cdef int64_t _timeout_to_ns(object t) except -2:
    cdef double d
    cdef int64_t ns
    if t is None:
        return -1
    d = t
    if d <= 0:
        return 0
    ns = <int64_t>(d * 1e9)
    return ns if ns > 0 else 1


cdef inline int64_t _deadline(int64_t timeout_ns) noexcept nogil:
    """0 (no deadline) unless the timeout is positive."""
    if timeout_ns > 0:
        return fs_monotonic_ns() + timeout_ns
    return 0


cdef int _raise_errno(int err) except -1:
    """Raise socket.timeout for _TIMED_OUT, else OSError(err) with its
    PEP 3151 subclass."""
    global errno
    if err == _TIMED_OUT:
        raise _socket_timeout("timed out")
    errno = err
    PyErr_SetFromErrno(OSError)
    return -1


cdef inline int _fileno(object sock) except? -1:
    return sock.fileno()


# For a socket that _drivable() vouched for: its gettimeout() and fileno()
# called as the methods themselves (unbound, the socket as argument), with
# no lookup on the socket's class. The stream reader and writers do both
# for every receive and send: in the pingpong bench (callgrind, server's
# user space) a request went from 3,684 to 3,232 instructions this way.
cdef object _gettimeout_method = _SocketType.gettimeout
cdef object _fileno_method = _SocketType.fileno


cdef inline int64_t _plain_timeout_ns(object sock) except -2:
    return _timeout_to_ns(_gettimeout_method(sock))


cdef inline int _plain_fileno(object sock) except? -1:
    return _fileno_method(sock)


# --- nogil halves ------------------------------------------------------------

cdef int _wait_fd(int fd, short events, int64_t deadline, int *err) noexcept nogil:
    """Wait until fd is ready or the deadline passes; 0 when ready."""
    cdef pollfd p
    cdef int64_t left = deadline - fs_monotonic_ns()
    cdef int r
    if left < 0:
        err[0] = _TIMED_OUT
        return -1
    p.fd = fd
    p.events = events
    p.revents = 0
    r = poll(&p, 1, _ms_ceil(left))
    if r < 0:
        err[0] = errno
        return -1
    if r == 0:
        err[0] = _TIMED_OUT
        return -1
    return 0


cdef inline bint _is_eagain(int err) noexcept nogil:
    return FS_IS_EAGAIN(err)


cdef Py_ssize_t _recv_nogil(int fd, char *buf, Py_ssize_t n, int64_t deadline,
                            int *err) noexcept nogil:
    cdef Py_ssize_t r
    while True:
        if deadline and _wait_fd(fd, POLLIN, deadline, err) < 0:
            return -1
        r = recv(fd, buf, <size_t>n, 0)
        if r >= 0:
            return r
        err[0] = errno
        if not (deadline and _is_eagain(err[0])):
            return -1


cdef Py_ssize_t _send_nogil(int fd, const char *buf, Py_ssize_t n,
                            int64_t deadline, int *err) noexcept nogil:
    cdef Py_ssize_t r
    while True:
        if deadline and _wait_fd(fd, POLLOUT, deadline, err) < 0:
            return -1
        r = send(fd, buf, <size_t>n, 0)
        if r >= 0:
            return r
        err[0] = errno
        if not (deadline and _is_eagain(err[0])):
            return -1


cdef int _accept_nogil(int fd, sockaddr *addr, socklen_t *addrlen,
                       int64_t deadline, int *err) noexcept nogil:
    cdef int r
    while True:
        if deadline and _wait_fd(fd, POLLIN, deadline, err) < 0:
            return -1
        addrlen[0] = sizeof(sockaddr_storage)
        r = fs_accept_cloexec(fd, addr, addrlen)
        if r >= 0:
            return r
        err[0] = errno
        if not (deadline and _is_eagain(err[0])):
            return -1


cdef int _recvmmsg_nogil(int fd, fs_mmsghdr *msgs, unsigned int vlen,
                         int64_t deadline, int *err) noexcept nogil:
    cdef int r
    while True:
        if deadline and _wait_fd(fd, POLLIN, deadline, err) < 0:
            return -1
        r = fs_recvmmsg(fd, msgs, vlen, FS_MSG_WAITFORONE)
        if r >= 0:
            return r
        err[0] = errno
        if not (deadline and _is_eagain(err[0])):
            return -1


# --- GIL halves --------------------------------------------------------------

cdef Py_ssize_t _sock_recv(object sock, char *buf, Py_ssize_t n) except -1:
    """sock.recv_into(buf[:n]); _WOULD_BLOCK where it raises BlockingIOError.
    For a socket that _drivable(sock, _STREAM_METHODS) vouched for."""
    cdef int64_t deadline = _deadline(_plain_timeout_ns(sock))
    cdef int err = 0
    cdef int fd
    cdef Py_ssize_t r
    while True:
        fd = _plain_fileno(sock)
        with nogil:
            r = _recv_nogil(fd, buf, n, deadline, &err)
        if r >= 0:
            return r
        if err == EINTR:
            PyErr_CheckSignals()
            continue
        if _is_eagain(err):
            return _WOULD_BLOCK
        _raise_errno(err)


cdef int _sock_sendall(object sock, const char *buf, Py_ssize_t n) except -1:
    """sock.sendall(buf[:n]): one deadline for the whole call, signal
    handlers run after every partial send. For a socket that
    _drivable(sock, _STREAM_METHODS) vouched for."""
    cdef int64_t timeout = _plain_timeout_ns(sock)
    cdef int64_t deadline = _deadline(timeout)
    cdef bint first = True
    cdef int err = 0
    cdef int fd
    cdef Py_ssize_t r
    # Every send releases the GIL, even one that cannot block. A send on a
    # TCP connection is a large part of a small request's time (over
    # loopback it delivers the segment too), and a handler thread that the
    # kernel preempts in it, while holding the GIL, makes the threads that
    # run next wait for the GIL. Measured in the pingpong bench (server on
    # one CPU): 0.83 futex waits and 1.45 context switches per request with
    # a non-blocking first send under the GIL, 0.004 and 1.00 this way.
    while True:
        if deadline and not first and deadline - fs_monotonic_ns() <= 0:
            raise _socket_timeout("timed out")
        first = False
        fd = _plain_fileno(sock)
        with nogil:
            r = _send_nogil(fd, buf, n, deadline, &err)
        if r < 0:
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            _raise_errno(err)
        buf += r
        n -= r
        PyErr_CheckSignals()
        if n <= 0:
            return 0


cdef int _poll_retry(pollfd *fds, nfds_t nfds, int timeout_ms) except -1:
    """poll() with the GIL released, retried after EINTR with the time left
    (PEP 475); the number of ready descriptors."""
    cdef int64_t deadline = 0
    cdef int r, err
    if timeout_ms > 0:
        deadline = fs_monotonic_ns() + <int64_t>timeout_ms * 1000000
    while True:
        with nogil:
            r = poll(fds, nfds, timeout_ms)
            err = errno
        if r >= 0:
            return r
        if err != EINTR:
            _raise_errno(err)
        PyErr_CheckSignals()
        if timeout_ms > 0:
            timeout_ms = _ms_ceil(deadline - fs_monotonic_ns())


# --- addresses ---------------------------------------------------------------

cdef str _format_ipv4(const unsigned char *octets):
    """Dotted decimal, as inet_ntop() writes it: glibc's goes through
    sprintf(), which cost more than the rest of a datagram's receive."""
    cdef char text[16]
    cdef int i, n = 0
    cdef unsigned int v
    for i in range(4):
        v = octets[i]
        if v >= 100:
            text[n] = <char>(c'0' + v // 100)
            n += 1
        if v >= 10:
            text[n] = <char>(c'0' + v // 10 % 10)
            n += 1
        text[n] = <char>(c'0' + v % 10)
        text[n + 1] = c'.'
        n += 2
    return text[:n - 1].decode("ascii")


cdef object _make_address(sockaddr *sa, socklen_t addrlen):
    """The client address as Python's socket module formats it."""
    cdef char text[64]
    cdef sockaddr_in *sin
    cdef sockaddr_in6 *sin6
    cdef sockaddr_un *sun
    cdef Py_ssize_t path_len
    if addrlen == 0:
        return None   # recvfrom() from an unbound AF_UNIX socket
    if sa.sa_family == AF_INET:
        sin = <sockaddr_in *>sa
        return (_format_ipv4(<const unsigned char *>&sin.sin_addr),
                ntohs(sin.sin_port))
    if sa.sa_family == AF_INET6:
        sin6 = <sockaddr_in6 *>sa
        if inet_ntop(AF_INET6, &sin6.sin6_addr, text, sizeof(text)) == NULL:
            _raise_errno(errno)
        return (text.decode("ascii"), ntohs(sin6.sin6_port),
                ntohl(sin6.sin6_flowinfo), sin6.sin6_scope_id)
    if sa.sa_family == AF_UNIX:
        sun = <sockaddr_un *>sa
        path_len = <Py_ssize_t>addrlen - (<char *>&sun.sun_path[0] - <char *>sa)
        if FS_HAVE_ABSTRACT_UNIX and path_len > 0 and sun.sun_path[0] == 0:
            # Linux's abstract namespace: bytes, leading NUL included.
            return PyBytes_FromStringAndSize(sun.sun_path, path_len)
        if path_len <= 0:
            return ""
        return PyUnicode_DecodeFSDefaultAndSize(
            sun.sun_path, <Py_ssize_t>strnlen(sun.sun_path, <size_t>path_len))
    raise OSError(_errno.EAFNOSUPPORT, "unsupported address family %d" % sa.sa_family)


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object s)
    PyObject *PyErr_Occurred()
    unsigned long _as_unsigned_long "PyLong_AsUnsignedLong"(object obj)


cdef inline int _bounded_int(object value, unsigned long bound,
                             unsigned long *out) noexcept:
    """out = value, an int (not a bool) in [0, bound]; -1 for anything else."""
    cdef unsigned long v
    if type(value) is not int:
        return -1
    v = _as_unsigned_long(value)
    if v == <unsigned long>-1 and PyErr_Occurred() != NULL:
        PyErr_Clear()   # negative or too large: the socket module's error
        return -1
    if v > bound:
        return -1
    out[0] = v
    return 0


cdef int _numeric_address(int family, object address, sockaddr_storage *sa,
                          socklen_t *salen) except -2:
    """Fill sa from an (ip, port[, flowinfo, scope_id]) tuple whose ip is
    numeric, as socket.sendto() would; 0 on success, -1 for anything else
    (a host name, "", "<broadcast>", a scope suffix, a value out of range,
    another family), which the caller leaves to the socket module and its
    exact errors."""
    cdef sockaddr_in *sin
    cdef sockaddr_in6 *sin6
    cdef Py_ssize_t size, length
    cdef const char *host
    cdef unsigned long port, flowinfo = 0, scope_id = 0
    if type(address) is not tuple:
        return -1
    size = len(<tuple>address)
    if not (size == 2 if family == AF_INET else
            (family == AF_INET6 and 2 <= size <= 4)):
        return -1
    ip = (<tuple>address)[0]
    if type(ip) is not str or not PyUnicode_IS_ASCII(ip):
        return -1
    # C conversions only: this runs for every datagram's reply.
    if (_bounded_int((<tuple>address)[1], 0xffff, &port) < 0
            or (size > 2 and _bounded_int((<tuple>address)[2], 0xfffff, &flowinfo) < 0)
            or (size > 3 and _bounded_int((<tuple>address)[3], 0xffffffff, &scope_id) < 0)):
        return -1
    host = PyUnicode_AsUTF8AndSize(ip, &length)
    if <Py_ssize_t>strlen(host) != length:
        return -1   # an embedded NUL: the socket module's error
    memset(sa, 0, sizeof(sockaddr_storage))
    if family == AF_INET:
        sin = <sockaddr_in *>sa
        if inet_pton(AF_INET, host, &sin.sin_addr) != 1:
            return -1
        sin.sin_family = AF_INET
        sin.sin_port = htons(<uint16_t>port)
        salen[0] = sizeof(sockaddr_in)
        return 0
    sin6 = <sockaddr_in6 *>sa
    if inet_pton(AF_INET6, host, &sin6.sin6_addr) != 1:
        return -1
    sin6.sin6_family = AF_INET6
    sin6.sin6_port = htons(<uint16_t>port)
    sin6.sin6_flowinfo = htonl(<uint32_t>flowinfo)
    sin6.sin6_scope_id = <uint32_t>scope_id
    salen[0] = sizeof(sockaddr_in6)
    return 0


cdef inline bint _family_supported(int family) noexcept:
    return family == AF_INET or family == AF_INET6 or family == AF_UNIX


# Per class: may the C path drive sockets of this class? Only socket.socket
# and subclasses whose methods named below are still socket.socket's own, as
# they were when this module was imported: a class patched since (a
# wrapper, a test double, a monkeypatched socket.socket) gets the Python
# path, which calls its methods. The answer is cached with the class's
# version tag, which CPython invalidates whenever the class or one of its
# bases is modified; the lookups that recompute it assign a new one.
cdef dict _drivable_cache = {}


cdef inline unsigned int _version_tag(object cls) noexcept:
    cdef PyTypeObject *t = <PyTypeObject *>cls
    if t.tp_flags & Py_TPFLAGS_VALID_VERSION_TAG:
        return t.tp_version_tag
    return 0


# socket.socket's version tag when every method in _ORIGINAL_METHODS was
# found its own: the fast path of the common case.
cdef unsigned int _plain_tag = 0


cdef bint _drivable(object sock, tuple methods) except -1:
    global _plain_tag
    cdef unsigned int tag
    cls = type(sock)
    if cls is _SocketType:
        tag = _version_tag(cls)
        if tag != 0 and tag == _plain_tag:
            return True
        if all(getattr(cls, name, None) is method
               for name, method in _ORIGINAL_METHODS.items()):
            _plain_tag = _version_tag(cls)
            return True
    key = (cls, methods)
    cached = _drivable_cache.get(key)
    tag = _version_tag(cls)
    if cached is not None and tag != 0 and (<tuple>cached)[0] == tag:
        return (<tuple>cached)[1]
    ok = isinstance(sock, _SocketType) and all(
        getattr(cls, name, None) is _ORIGINAL_METHODS[name] for name in methods)
    tag = _version_tag(cls)   # the getattr()s above assigned one if needed
    if tag != 0:
        _drivable_cache[key] = (tag, ok)
    return ok


_STREAM_METHODS = ("recv", "recv_into", "send", "sendall", "fileno", "gettimeout")
_ACCEPT_METHODS = ("accept", "_accept", "fileno", "gettimeout")
_DGRAM_METHODS = ("recvfrom", "recvfrom_into", "recv", "recvmsg", "fileno", "gettimeout")
_SENDTO_METHODS = ("sendto", "fileno")
_ORIGINAL_METHODS = {name: getattr(_SocketType, name) for name in set(
    _STREAM_METHODS + _ACCEPT_METHODS + _DGRAM_METHODS + _SENDTO_METHODS)}


cdef extern from "Python.h":
    # PyObject_GetBuffer without Cython's automatic raise: callers fall back
    # to the pure path (and its exact error) when it fails.
    int _try_get_buffer "PyObject_GetBuffer"(object obj, Py_buffer *view, int flags)
    void PyErr_Clear()


cdef inline int _get_buffer_or_clear(object obj, Py_buffer *view, int flags) noexcept:
    if _try_get_buffer(obj, view, flags) < 0:
        PyErr_Clear()
        return -1
    return 0
