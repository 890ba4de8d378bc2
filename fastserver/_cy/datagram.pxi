# DatagramReceiver: UDPServer.get_request's default. See _core.pxd.

# The batch and slot bounds are the contract's policy (datagram_slots):
# slots hold any UDP datagram whole, so each recv() cuts at the
# max_packet_size of its own call, as recvfrom() would even when the
# attribute changes between calls; a larger max_packet_size gets fewer
# slots. Only the touched part of a slot is ever paged in.
cdef enum:
    _MAX_BATCH = 64     # _contract.DATAGRAM_BATCH: the headers allocated
assert _MAX_BATCH == _contract.DATAGRAM_BATCH
_datagram_slots = _contract.datagram_slots


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

    def __sizeof__(self):
        # The slots and their headers count, as a bytearray's allocation does.
        cdef Py_ssize_t size = object.__sizeof__(self)
        if self._msgs != NULL:
            size += _MAX_BATCH * (sizeof(fs_mmsghdr) + sizeof(iovec)
                                  + sizeof(sockaddr_storage))
        return size + self._slot_size * self._batch

    def recv(self, max_packet_size):
        cdef Py_ssize_t size = max_packet_size
        if self._next < self._count:
            return self._pop(size)
        if not self._direct or self._busy or self._copying or size <= 0:
            return self._sock.recvfrom(max_packet_size)
        # Busy before anything that may run Python code and so switch
        # threads (the checks, the contract's slot policy): the slots are
        # this call's until the batch is in.
        self._busy = True
        try:
            if not _drivable(self._sock, _DGRAM_METHODS):
                # The socket's class was patched since: its methods decide.
                return self._sock.recvfrom(max_packet_size)
            self._ensure_slots(size)
            self._receive()
        finally:
            self._busy = False
        return self._pop(size)

    cdef int _ensure_slots(self, Py_ssize_t size) except -1:
        cdef char *data
        cdef Py_ssize_t slot
        cdef int i, batch
        if self._msgs == NULL:
            self._msgs = <fs_mmsghdr *>PyMem_Malloc(
                _MAX_BATCH * (sizeof(fs_mmsghdr) + sizeof(iovec) + sizeof(sockaddr_storage)))
            if self._msgs == NULL:
                raise MemoryError()
            self._names = <sockaddr_storage *>(self._msgs + _MAX_BATCH)
            self._iov = <iovec *>(self._names + _MAX_BATCH)
            memset(self._msgs, 0, _MAX_BATCH * sizeof(fs_mmsghdr))
        slot, batch = _datagram_slots(size)
        if slot == self._slot_size and batch == self._batch:
            return 0
        if slot > (<Py_ssize_t>0x7fffffff) // batch:
            raise MemoryError()
        # Sized to this call: a smaller max_packet_size shrinks the slots
        # again, so one large call does not pin its size for good.
        data = <char *>PyMem_Realloc(self._data, slot * batch)
        if data == NULL:
            raise MemoryError()
        self._data = data
        self._slot_size = slot
        self._batch = batch
        for i in range(batch):
            self._iov[i].iov_base = self._data + i * slot
            self._iov[i].iov_len = <size_t>slot
            self._msgs[i].msg_hdr.msg_name = &self._names[i]
            self._msgs[i].msg_hdr.msg_iov = &self._iov[i]
            self._msgs[i].msg_hdr.msg_iovlen = 1
        return 0

    cdef int _receive(self) except -1:
        cdef int64_t deadline = _deadline(_timeout_ns(self._sock))
        cdef int err = 0, fd, n, i
        cdef fs_mmsghdr *msgs = self._msgs
        while True:
            for i in range(self._batch):
                msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                msgs[i].msg_hdr.msg_controllen = 0
                msgs[i].msg_hdr.msg_flags = 0
            fd = _fileno(self._sock)
            with nogil:
                n = _recvmmsg_nogil(fd, msgs, <unsigned int>self._batch, deadline, &err)
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
        # Claim the slot, then copy it out while _copying keeps recv() from
        # refilling the slots: either allocation below may let another
        # thread run, and its recv() must neither take this slot nor
        # overwrite it (which would pair one datagram's payload with
        # another's address).
        cdef int i = self._next
        cdef fs_mmsghdr *m = &self._msgs[i]
        cdef Py_ssize_t n = m.msg_len
        self._next += 1
        self._copying += 1
        try:
            if n > size:
                n = size   # cut as recvfrom(max_packet_size) would
            data = PyBytes_FromStringAndSize(<char *>self._iov[i].iov_base, n)
            address = _make_address(<sockaddr *>m.msg_hdr.msg_name,
                                    m.msg_hdr.msg_namelen)
        finally:
            self._copying -= 1
            if self._copying == 0 and self._next == self._count:
                self._next = self._count = 0
        return data, address


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
