# accept(): TCPServer.get_request's default.

# The raw ints, as socket.accept() passes them on: the C type's members,
# not socket.socket's properties, which build an enum on every call (a
# cost once per datagram in sendto()).
_sock_family = _c_socket.socket.family.__get__
_sock_type = _c_socket.socket.type.__get__
_sock_proto = _c_socket.socket.proto.__get__


def accept(sock, nodelay=False, raw=False):
    """See fastserver._contract.Core.accept."""
    cdef sockaddr_storage addr
    cdef socklen_t addrlen = 0
    cdef int64_t timeout, deadline
    cdef int err = 0, fd, cfd, one = 1
    if not raw and not _drivable(sock, _ACCEPT_METHODS):
        return _set_nodelay(sock.accept(), nodelay)
    family = _sock_family(sock)
    if not _family_supported(family):
        return _set_nodelay(_raw_accept(sock) if raw else sock.accept(), nodelay)
    timeout = _timeout_ns(sock)
    deadline = _deadline(timeout)
    while True:
        fd = _fileno(sock)
        with nogil:
            cfd = _accept_nogil(fd, <sockaddr *>&addr, &addrlen, deadline, &err)
        if cfd >= 0:
            break
        if err == EINTR:
            PyErr_CheckSignals()
            continue
        _raise_errno(err)
    if nodelay and (addr.ss_family == AF_INET or addr.ss_family == AF_INET6):
        # Best effort, as the stdlib's setup() would be were it asked: a
        # connection already reset can refuse it (the BSDs say EINVAL), and
        # its first recv or send reports the reset anyway.
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    try:
        address = _make_address(<sockaddr *>&addr, addrlen)
        conn = _SocketType(family, _sock_type(sock), _sock_proto(sock), cfd)
    except BaseException:
        close(cfd)
        raise
    # As socket.accept(): where the new socket inherits O_NONBLOCK from a
    # listening socket with a timeout, make it blocking for timeout None.
    if _getdefaulttimeout() is None and timeout != -1 and timeout != 0:
        conn.setblocking(True)
    return conn, address


# socket.socket's own accept(): a plain socket, whatever sock's class does
# (an SSLSocket's would run the handshake).
_raw_accept = _socket.socket.accept


def _set_nodelay(accepted, nodelay):
    """accept()'s result, with TCP_NODELAY set on a TCP connection when
    nodelay is true (for sockets the C path does not drive)."""
    if nodelay:
        conn = accepted[0]
        if _sock_family(conn) in (AF_INET, AF_INET6):
            try:
                conn.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            except OSError:
                pass
    return accepted
