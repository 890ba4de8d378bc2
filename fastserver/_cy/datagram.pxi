# DatagramReceiver: UDPServer.get_request's default. See _core.pxd.

cdef enum:
    _BATCH = 64     # datagrams per recvmmsg()
    # Slots hold any UDP datagram whole (the largest is 65535 bytes), so each
    # recv() cuts at the max_packet_size of its own call, as recvfrom() would
    # even when the attribute changes between calls. Only the touched part
    # of a slot is ever paged in.
    _MIN_SLOT = 65536


cdef class DatagramReceiver:
    """See fastserver._contract.DatagramReceiver."""

    def __init__(self, sock):
        self.sock = sock

    @property
    def sock(self):
        return self._sock

    @sock.setter
    def sock(self, sock):
        self._sock = sock
        self._direct = (_drivable(sock, _DGRAM_METHODS)
                        and _family_supported(_sock_family(sock)))
        self._count = self._next = 0

    def __dealloc__(self):
        PyMem_Free(self._data)
        PyMem_Free(self._msgs)

    @property
    def pending(self):
        return self._count - self._next

    def recv(self, max_packet_size):
        cdef Py_ssize_t size = max_packet_size
        if self._next < self._count:
            return self._pop(size)
        if not self._direct or self._busy or size <= 0:
            return self._sock.recvfrom(max_packet_size)
        self._ensure_slots(size)
        self._busy = True
        try:
            self._receive()
        finally:
            self._busy = False
        return self._pop(size)

    cdef int _ensure_slots(self, Py_ssize_t size) except -1:
        cdef char *data
        cdef int i
        if self._msgs == NULL:
            self._msgs = <fs_mmsghdr *>PyMem_Malloc(
                _BATCH * (sizeof(fs_mmsghdr) + sizeof(iovec) + sizeof(sockaddr_storage)))
            if self._msgs == NULL:
                raise MemoryError()
            self._names = <sockaddr_storage *>(self._msgs + _BATCH)
            self._iov = <iovec *>(self._names + _BATCH)
            memset(self._msgs, 0, _BATCH * sizeof(fs_mmsghdr))
        if size < _MIN_SLOT:
            size = _MIN_SLOT
        if size > self._slot_size:
            if size > (<Py_ssize_t>0x7fffffff) // _BATCH:
                raise MemoryError()
            data = <char *>PyMem_Realloc(self._data, size * _BATCH)
            if data == NULL:
                raise MemoryError()
            self._data = data
            self._slot_size = size
        size = self._slot_size
        for i in range(_BATCH):
            self._iov[i].iov_base = self._data + i * size
            self._iov[i].iov_len = <size_t>size
            self._msgs[i].msg_hdr.msg_name = &self._names[i]
            self._msgs[i].msg_hdr.msg_iov = &self._iov[i]
            self._msgs[i].msg_hdr.msg_iovlen = 1
        return 0

    cdef int _receive(self) except -1:
        cdef int64_t deadline = _deadline(_timeout_ns(self._sock))
        cdef int err = 0, fd, n, i
        cdef fs_mmsghdr *msgs = self._msgs
        while True:
            for i in range(_BATCH):
                msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                msgs[i].msg_hdr.msg_controllen = 0
                msgs[i].msg_hdr.msg_flags = 0
            fd = _fileno(self._sock)
            with nogil:
                n = _recvmmsg_nogil(fd, msgs, _BATCH, deadline, &err)
            if n > 0:
                break
            if n == 0:
                continue
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            _raise_errno(err)
        self._count = n
        self._next = 0
        return 0

    cdef object _pop(self, Py_ssize_t size):
        cdef int i = self._next
        cdef fs_mmsghdr *m = &self._msgs[i]
        cdef Py_ssize_t n = m.msg_len
        self._next += 1
        if self._next == self._count:
            self._next = self._count = 0
        if n > size:
            n = size   # cut as recvfrom(max_packet_size) would
        address = _make_address(<sockaddr *>m.msg_hdr.msg_name, m.msg_hdr.msg_namelen)
        return PyBytes_FromStringAndSize(<char *>self._iov[i].iov_base, n), address


_SENDTO_METHODS = ("sendto", "fileno")


def sendto(sock, data, address):
    """See fastserver._contract.Core.sendto."""
    cdef sockaddr_storage sa
    cdef socklen_t salen = 0
    cdef Py_buffer view
    cdef Py_ssize_t r
    cdef int err = 0
    if (not _drivable(sock, _SENDTO_METHODS)
            or _numeric_address(_sock_family(sock), address, &sa, &salen) < 0
            or _get_buffer_or_clear(data, &view, PyBUF_SIMPLE) < 0):
        return sock.sendto(data, address)
    try:
        PySys_Audit("socket.sendto", "OO", <PyObject *>sock, <PyObject *>address)
        r = c_sendto(_fileno(sock), view.buf, <size_t>view.len, MSG_DONTWAIT,
                     <sockaddr *>&sa, salen)
        if r < 0:
            err = errno
    finally:
        PyBuffer_Release(&view)
    if r >= 0:
        return r
    if _is_eagain(err) or err == EINTR:
        return sock.sendto(data, address)
    _raise_errno(err)
