# DatagramReceiver: UDPServer.get_request's default; sendto() and
# handle_datagram(): a DatagramRequestHandler's reply, and the whole handler
# when its methods are fastserver's own. See _core.pxd.

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

    cpdef recv(self, max_packet_size):
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


# Per reply, for a socket that _drivable() vouched for: its family read by
# the member descriptor's own getter, and fileno() by the method itself,
# with no bound method or argument tuple made in between.
cdef extern from *:
    """
    static PyObject *fs_descr_get(PyObject *descr, PyObject *obj) {
        return Py_TYPE(descr)->tp_descr_get(descr, obj, (PyObject *)Py_TYPE(obj));
    }
    """
    object _descr_get "fs_descr_get"(object descr, object obj)

_family_member = _c_socket.socket.__dict__["family"]


cdef inline int _plain_family(object sock) except? -1:
    return _descr_get(_family_member, sock)


def sendto(sock, data, address):
    """See fastserver._contract.Core.sendto."""
    return _sendto(sock, data, address)


cdef object _sendto(object sock, object data, object address):
    cdef sockaddr_storage sa
    cdef socklen_t salen = 0
    cdef Py_buffer view
    cdef Py_ssize_t r
    cdef int err = 0
    if (not _drivable(sock, _SENDTO_METHODS)
            or _numeric_address(_plain_family(sock), address, &sa, &salen) < 0
            or _get_buffer_or_clear(data, &view, PyBUF_SIMPLE) < 0):
        return sock.sendto(data, address)
    try:
        PySys_Audit("socket.sendto", "OO", <PyObject *>sock, <PyObject *>address)
        r = c_sendto(_plain_fileno(sock), view.buf, <size_t>view.len, MSG_DONTWAIT,
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


# --- DatagramRequestHandler's own methods, in C --------------------------------

cdef class _ClassVerdicts:
    """A yes or no per class, from judge(cls), cached with the class's
    version tag as _drivable is: a class modified since (a method patched
    in) is judged again. Bounded: a process that makes classes on the fly
    does not keep them all. The last class asked about is checked before
    the dict: one server, one handler class."""

    cdef object _judge
    cdef dict _cache
    cdef object _last
    cdef unsigned int _last_tag
    cdef bint _last_ok

    def __init__(self, judge):
        self._judge = judge
        self._cache = {}

    cdef bint verdict(self, object cls) except -1:
        cdef unsigned int tag
        if type(cls) is not type:
            # A partial, a function, or a metaclass that may have its own
            # __call__ or attribute lookup: used as they are.
            return False
        tag = _version_tag(cls)
        if tag != 0 and tag == self._last_tag and cls is self._last:
            return self._last_ok
        cached = self._cache.get(cls)
        if cached is not None and tag != 0 and (<tuple>cached)[0] == tag:
            self._remember(cls, tag, (<tuple>cached)[1])
            return (<tuple>cached)[1]
        ok = bool(self._judge(cls))
        tag = _version_tag(cls)   # the judge's lookups assigned one if needed
        if tag != 0:
            if len(self._cache) >= _VERDICTS_MAX:
                self._cache.clear()
            self._cache[cls] = (tag, ok)
            self._remember(cls, tag, ok)
        return ok

    cdef void _remember(self, object cls, unsigned int tag, bint ok) noexcept:
        # The tag last: dropping the previous class may run Python code (and
        # switch threads), and a lookup meanwhile must not match half of each.
        self._last_tag = 0
        self._last = cls
        self._last_ok = ok
        self._last_tag = tag


cdef enum:
    _VERDICTS_MAX = 256


# fastserver.handlers, fastserver.servers and preamble.current, imported at
# the first datagram: they import the core, so it cannot import them when
# it loads.
cdef object _handlers_module = None
cdef object _servers_module = None
cdef object _preamble_current = None


cdef int _import_layers() except -1:
    global _handlers_module, _servers_module, _preamble_current
    if _preamble_current is None:
        from fastserver import handlers, preamble, servers
        _handlers_module = handlers
        _servers_module = servers
        _preamble_current = preamble.current
    return 0


# What the stand-in sets on the handler and then uses from its locals: a
# class that intercepts them (a property, a slot) is served by its methods.
_HANDLER_FIELDS = ("request", "client_address", "server", "packet", "socket",
                   "rfile", "wfile")
# What it runs instead of the class's own is handlers._DATAGRAM_DEFAULTS.


def _judge_handler(cls):
    """May handle_datagram() stand in for cls's __init__, setup() and
    finish()?"""
    _import_layers()
    return issubclass(cls, _handlers_module.DatagramRequestHandler) and all(
        getattr(cls, name, None) is value
        for name, value in _handlers_module._DATAGRAM_DEFAULTS) and not any(
        _intercepts(klass.__dict__.get(name))
        for klass in cls.__mro__ for name in _HANDLER_FIELDS)


cdef _ClassVerdicts _plain_handlers = _ClassVerdicts(_judge_handler)


cdef inline bint _intercepts(object attribute) except -1:
    """A data descriptor: assigning the instance attribute runs its code."""
    kind = type(attribute)
    return hasattr(kind, "__set__") or hasattr(kind, "__delete__")


def handle_datagram(handler_class, request, client_address, server):
    """See fastserver._contract.Core.handle_datagram."""
    _handle_datagram(handler_class, request, client_address, server)


cdef int _handle_datagram(object handler_class, object request,
                          object client_address, object server) except -1:
    if (not _plain_handlers.verdict(handler_class)
            or _preamble_current() is not None):
        handler_class(request, client_address, server)
        return 0
    # BaseRequestHandler.__init__ and DatagramRequestHandler.setup().
    handler = object.__new__(handler_class)
    handler.request = request
    handler.client_address = client_address
    handler.server = server
    packet, sock = request
    handler.packet = packet
    handler.socket = sock
    handler.rfile = (DatagramFile.new(<bytes>packet) if type(packet) is bytes
                     else DatagramFile(packet))
    handler.wfile = DatagramFile.new(None)
    try:
        handler.handle()
    finally:
        _finish_datagram(handler, server)
    return 0


cdef int _finish_datagram(object handler, object server) except -1:
    """DatagramRequestHandler.finish(): the attributes are read again, in
    its order, since handle() may have replaced any of them."""
    if handler.server is not server:
        # Another server's core decides how to send: the original finish()
        # (the class's own is that one, _plain_handlers made sure).
        handler.finish()
        return 0
    sock = handler.socket
    wfile = handler.wfile
    if type(wfile) is DatagramFile and (<DatagramFile>wfile)._native():
        data = (<DatagramFile>wfile)._value()
    else:
        data = wfile.getvalue()
    _sendto(sock, data, handler.client_address)
    return 0
