# Contracts of the Cython core. The behaviour is fastserver/_contract.py's;
# this file says how the C side keeps it: which fields hold what, who may touch
# them, and the order in which the methods call each other.
#
# Concurrency: every field below is read and written with the GIL held. The
# GIL is released only inside the small `with nogil` blocks around blocking
# syscalls (poll, recv, send, accept, recvmmsg), and those blocks touch only
# C locals and memory that the calling method owns for the duration (see
# each class). This is why the module declares freethreading_compatible=False.
#
# Free-threaded CPython (3.13t and later). Importing this module there turns
# the GIL back on for the whole process (fastserver._compat picks the pure
# core instead when the GIL is disabled). To run without the GIL, each object
# below would need its own lock wherever the GIL now serialises it:
# - StreamReader: _lock already covers every path that releases the GIL;
#   the lock-free fast paths (read(n) and readline() from the buffer, the
#   _readahead() checks) would have to take it too, as would close().
# - CoalescingWriter: a lock around write()/_flush()/close() for _buf, _len
#   and _cap (today _flush() detaches the buffer and relies on the GIL for
#   the check-and-reattach); it must not be held across the send, or a
#   reader flushing before its recv would wait on a blocked peer.
# - DatagramReceiver: a lock for _busy, _copying, _next, _count and the slot
#   geometry (_ensure_slots may realloc _data while another thread pops).
# - ServeLoop: a lock for _wake_fd, so that shutdown()'s write and
#   serve_forever()'s close of the waker stay ordered (pure uses one);
#   _shutdown_request read with an atomic load.
# - Module state: _drivable_cache and _plain_tag (a dict and a word: both
#   need a lock or per-thread caches), the _ClassVerdicts caches, and the
#   version-tag read, which is not atomic with the type's modification
#   there.

cimport cython
from libc.stdint cimport int64_t

from fastserver.includes.system cimport fs_mmsghdr, sockaddr_storage, iovec


cdef extern from "pythread.h":
    ctypedef void *PyThread_type_lock


cdef class ServeLoop:
    # The serve loop of one server (BaseServer._fs_loop).
    #
    # serve_forever(server, poll_interval):
    #   take server.fileno() first (ValueError for a closed socket, -1) ->
    #   _is_shut_down.clear() -> open a waker (eventfd, or a pipe; errno
    #   copied before any Python code runs) -> publish its write end in
    #   _wake_fd -> loop:
    #     server._fs_buffered.pending?  yes: ready without waiting
    #                                   no:  poll(waker, server fd) with the
    #                                        GIL released, PEP 475 retries
    #     POLLNVAL on the server fd (server_close() under the loop) -> break
    #     _shutdown_request? -> break
    #     ready? -> server._handle_request_noblock()   (Python lookup: an
    #                                                   override wins), or
    #               for a plain UDPServer its work in C (dgram_serve.pxi)
    #     server.service_actions()
    #   finally (and when the fd or the waker fails): _wake_fd = -1, close
    #            the waker, clear _shutdown_request, _is_shut_down.set()
    # shutdown(): _shutdown_request = True -> one non-blocking write to
    #   _wake_fd (if >= 0; any error but EAGAIN raises) ->
    #   _is_shut_down.wait(). The write and the close in
    #   serve_forever's finally both run with the GIL held, so shutdown()
    #   never writes to a descriptor that was closed and reused.
    # accept_failed(exc) feeds _backoff (the contract's policy), whose
    #   .until serve_forever() and wait_for_request() honour.
    cdef object _is_shut_down        # threading.Event, set while no serve_forever() runs
    cdef bint _shutdown_request      # set by shutdown(), cleared when serve_forever() returns
    cdef int _wake_fd                # waker write end while serve_forever() runs, else -1
    cdef object _backoff             # _contract.AcceptBackoff: the policy; .until is read here
    cdef object _checked_attributes  # the server's __dict__ as last found free of overrides, or None
    cdef Py_ssize_t _checked_count   # ... and its size then (dgram_serve.pxi)


cdef class DatagramReceiver:
    # The datagrams of one server socket, received in recvmmsg() batches.
    #
    # recv(size): _next < _count ? pop slot _next : _receive(size) then pop.
    #   _receive blocks like sock.recvfrom (timeout honoured) for the first
    #   datagram and takes whatever else is queued without blocking
    #   (MSG_WAITFORONE). _pop claims slot _next (advances) with the GIL
    #   held, then formats the address and copies the data out while
    #   _copying > 0; the last copier to finish resets an exhausted batch.
    # _busy is set for the duration of _receive (the GIL is released then),
    # and _copying while a pop allocates (which may switch threads): a
    # second thread calling recv() meanwhile, with no slot left to claim,
    # uses sock.recvfrom() instead of the slots, which therefore never
    # change under a receive or a copy.
    # Slots: _contract.datagram_slots(max_packet_size) gives the slot size
    #   (at least 64 KiB, so any UDP datagram fits whole) and their number
    #   (at most 64, fewer for large sizes: the slots together stay within
    #   DATAGRAM_SLOTS_BYTES); _ensure_slots resizes them to each call's.
    # The socket's class is checked again on each batch (_drivable), so a
    # class patched after the receiver was made is honoured.
    cdef object _sock                # .sock: the server socket (UDPServer compares identity);
                                     # assigning it recomputes _direct and drops the batch
    cdef bint _direct                # sock is a plain socket.socket of a family we format
    cdef bint _busy                  # a _receive() is in progress
    cdef int _copying                # _pop()s copying a claimed slot out
    cdef int _count                  # datagrams in the slots of the last batch
    cdef int _next                   # the next slot to pop; pending == _count - _next
    cdef int _batch                  # slots in use (datagrams per recvmmsg)
    cdef Py_ssize_t _slot_size       # bytes per slot
    cdef char *_data                 # _batch * _slot_size bytes (PyMem)
    cdef fs_mmsghdr *_msgs           # 64 headers, pointing into _data/_iov/_names
    cdef iovec *_iov
    cdef sockaddr_storage *_names

    cpdef recv(self, max_packet_size)
    cdef int _ensure_slots(self, Py_ssize_t size) except -1
    cdef int _receive(self) except -1
    cdef object _pop(self, Py_ssize_t size)


@cython.final
cdef class DatagramFile:
    # A DatagramRequestHandler's rfile and wfile: io.BytesIO, for less.
    #
    # The contents are _ref while they are exactly one bytes object (the
    # request datagram, or a reply written in one write() of bytes): no
    # copy is made to read it or to send it. The first write that changes
    # them copies them into _buf (PyMem, _cap bytes), which holds them from
    # then on. Reading never copies more than the bytes it returns.
    #
    # Every public method: _native() ? (argument of a plain type and range ?
    # do it here : _materialise()) : _materialise(); then the BytesIO's
    # method. _materialise() makes _bio, an io.BytesIO with the same
    # contents and position (a closed one for a closed file), once, and
    # frees _ref/_buf: _bio answers everything from then on, so what this
    # class does not do itself (getbuffer, truncate, an attribute set on the
    # file, a wrong argument's error) is BytesIO's exact behaviour. Each of
    # BytesIO's other methods is here too, handing over at once.
    #
    # No method releases the GIL or runs Python code between reading
    # _buf/_ref and using them, except where noted in the .pxi.
    cdef bytes _ref                  # the contents while they are one bytes object, else None
    cdef char *_buf                  # the contents once written (when _ref is None)
    cdef Py_ssize_t _len             # size of the contents
    cdef Py_ssize_t _cap             # bytes allocated at _buf
    cdef Py_ssize_t _pos             # the position; may be past _len, as in BytesIO
    cdef bint _closed                # close() ran natively
    cdef object _bio                 # the io.BytesIO that answers for this file, or None
    cdef dict __dict__               # attributes set on the file, as on a BytesIO
    cdef object __weakref__

    @staticmethod
    cdef DatagramFile new(bytes data)
    cdef void _set_bytes(self, bytes data) noexcept
    cdef const char *_contents(self) noexcept
    cdef object _materialise(self)
    cdef bint _native(self) noexcept
    cdef Py_ssize_t _available(self, Py_ssize_t size) noexcept
    cdef Py_ssize_t _line_length(self, Py_ssize_t size) noexcept
    cdef bytes _take(self, Py_ssize_t n)
    cdef int _reserve(self, Py_ssize_t end) except -1
    cdef object _write(self, object b)
    cdef bytes _value(self)


cdef class _WriterBase:
    # What io.BufferedIOBase gives the pure writers: closed/close/flush,
    # context management, the unsupported read side. close() calls flush()
    # (a Python-level call, so a subclass's flush runs) and then marks closed.
    cdef object _sock                # the connection socket
    cdef bint _closed
    cdef bint _direct                # sends with C send() loops
    cdef bint _tls                   # else, an SSLSocket: sends with its _ssl object's
                                     # write() (tls_io.pxi); else sock.sendall()
    cdef dict __dict__
    cdef object __weakref__

    cdef int _sendall(self, const char *data, Py_ssize_t n) except -1


cdef class SocketWriter(_WriterBase):
    # write(b): buffer b (PyBUF_SIMPLE) -> _sendall -> return len. Nothing is
    # kept between calls.
    @staticmethod
    cdef SocketWriter new(object sock, bint tls)


cdef class CoalescingWriter(_WriterBase):
    # write(b) appends to _buf and calls flush() once _len reaches _limit;
    # a b of _limit bytes or more is not copied: _flush(), then b is sent
    # from the caller's buffer.
    # _flush() detaches _buf (so a failed send loses the bytes, as in _pure,
    # and a write() from another thread during the send starts a fresh
    # buffer), sends it, and reattaches it for reuse if no new one appeared
    # and it is no larger than _contract.COALESCE_KEEP; else it is freed.
    # Callers: flush(), close(), and StreamReader._raw_read before each recv.
    cdef Py_ssize_t _limit           # send once this many bytes are pending
    cdef char *_buf                  # PyMem buffer, NULL until the first write
    cdef Py_ssize_t _len             # pending bytes
    cdef Py_ssize_t _cap             # allocated bytes

    @staticmethod
    cdef CoalescingWriter new(object sock, Py_ssize_t limit, bint tls)
    cdef int _flush(self) except -1


@cython.final
cdef class StreamReader:
    # rfile: io.BufferedReader over socket.SocketIO, state machine included.
    #
    # The buffer follows BufferedReader exactly, because peek(), read1() and
    # what an exception discards depend on it: _buffer[_pos:_read_end] is
    # unread data; _read_end == -1 marks the buffer invalid (reset), in which
    # case the next _fill_buffer() starts at 0, else it appends at _read_end.
    #
    # Call order: public method -> (fast path: buffered data only, no lock,
    # no Python calls but the result bytes) -> _enter() -> _read_generic /
    # _read_all / _readline_slow / _readinto -> _fill_buffer() or
    # _raw_read() directly into the caller's memory -> _leave(). Reads larger
    # than the buffer (read(n) in whole blocks, read1(n), readinto(), read())
    # go straight into the result or the caller's buffer: a result made for
    # it (fresh_bytes.pxi) is shrunk in place to what came, never sliced.
    # _raw_read == SocketIO.readinto: flush the paired CoalescingWriter, refuse
    # after a timeout ("cannot read from timed out object"), then one
    # _sock_recv() (poll+recv under one GIL release, EINTR per PEP 475) or,
    # for an SSLSocket (_tls), _tls_recv() (its _ssl object's read(), which
    # releases the GIL, waits and retries by itself), then
    # PyErr_CheckSignals() so that handlers run between receives as
    # they do after SocketIO.readinto returns to the eval loop; returns
    # bytes read, 0 at EOF, or -2 when the socket would block.
    # _lock (BufferedReader's lock) is held across every GIL release, so no
    # other thread can free or refill _buffer meanwhile; close() takes it too.
    cdef object _sock                # the connection; None once closed
    cdef CoalescingWriter _writer    # flushed before every recv, or None
    cdef char *_buffer               # _buffer_size bytes (PyMem), NULL once closed
    cdef Py_ssize_t _buffer_size
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _read_end
    cdef bint _closed
    cdef bint _timed_out             # SocketIO._timeout_occurred
    cdef bint _tls                   # sock is an SSLSocket: _tls_recv(), not _sock_recv()
    cdef PyThread_type_lock _lock
    cdef unsigned long _owner        # thread holding _lock, for the reentrancy error
    cdef dict __dict__
    cdef object __weakref__

    @staticmethod
    cdef StreamReader new(object sock, Py_ssize_t size, CoalescingWriter writer,
                          bint tls)
    cdef int _enter(self) except -1
    cdef void _leave(self) noexcept
    cdef Py_ssize_t _readahead(self)
    cdef Py_ssize_t _raw_read(self, char *start, Py_ssize_t length) except -1
    cdef Py_ssize_t _fill_buffer(self) except -1
    cdef object _read_generic(self, Py_ssize_t n)
    cdef Py_ssize_t _read_generic_into(self, char *out, Py_ssize_t n,
                                       Py_ssize_t current) except -1
    cdef object _read_all(self)
    cdef object _readline(self, Py_ssize_t limit)
    cdef object _readline_slow(self, Py_ssize_t limit)
    cdef object _readinto(self, object b, bint once)
