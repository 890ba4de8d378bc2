# ServeLoop: the loop behind BaseServer.serve_forever / shutdown /
# handle_request. See _core.pxd for the contract.


cdef int _listening_fd(object server) except -1:
    # poll() would skip a closed socket's -1 and wait on.
    cdef int fd = server.fileno()
    if fd < 0:
        raise _closed_socket_error(fd)
    return fd


cdef class ServeLoop:
    """See fastserver._contract.ServeLoop."""

    def __cinit__(self):
        self._wake_fd = -1

    def __init__(self):
        self._is_shut_down = _threading.Event()
        self._shutdown_request = False
        self._backoff = _AcceptBackoff()

    def serve_forever(self, server, poll_interval=0.5):
        cdef int wake[2]
        cdef pollfd fds[3]
        cdef int interval_ms, wait_ms, delay_ms, fd, i
        cdef nfds_t nfds
        cdef double delay
        cdef bint ready, lobby_ready
        cdef int err
        try:
            # The listening descriptor first (see _pure's serve_forever).
            fd = _listening_fd(server)
            self._is_shut_down.clear()
            if fs_waker_open(wake) < 0:
                err = errno   # before any Python code can change it
                _raise_errno(err)
        except BaseException:
            self._shutdown_request = False
            self._is_shut_down.set()
            raise
        self._wake_fd = wake[1]
        try:
            interval_ms = _poll_ms(poll_interval)
            fds[0].fd = wake[0]
            fds[0].events = POLLIN
            fds[1].events = _POLL_READ
            # The connections waiting for their first bytes (fastserver.lobby):
            # one more descriptor, set for the whole run.
            lobby = server._fs_open_lobby()
            nfds = 2
            if lobby is not None:
                fds[2].fd = lobby.fileno()
                fds[2].events = POLLIN
                nfds = 3
            while not self._shutdown_request:
                lobby_ready = False
                buffered = server._fs_buffered
                if buffered is not None and buffered.pending:
                    ready = True
                else:
                    wait_ms = interval_ms
                    fds[1].fd = fd
                    delay = self._backoff.until - _monotonic()
                    if delay > 0:
                        # Out of descriptors: leave the listener alone
                        # (poll() skips a negative descriptor).
                        fds[1].fd = -1
                        delay_ms = _poll_ms(delay)
                        wait_ms = delay_ms if wait_ms < 0 else min(wait_ms, delay_ms)
                    if lobby is not None:
                        wait_ms = lobby.timeout_ms(wait_ms)
                    fds[0].revents = 0
                    fds[1].revents = 0
                    fds[2].revents = 0
                    ready = False
                    if _poll_retry(fds, nfds, wait_ms) > 0:
                        if fds[0].revents:
                            fs_waker_drain(wake[0])
                        if fds[1].revents:
                            if fds[1].revents & POLLNVAL:
                                break   # server_close() under the loop: leave quietly
                            ready = True
                        lobby_ready = fds[2].revents != 0
                if self._shutdown_request:
                    break
                if ready:
                    _serve_ready(self, server)
                if lobby is not None:
                    lobby.service(lobby_ready)
                server.service_actions()
        finally:
            self._checked_attributes = None
            # With the GIL held throughout: shutdown() sees -1 or a live fd.
            self._wake_fd = -1
            close(wake[1])
            if wake[0] != wake[1]:
                close(wake[0])
            self._shutdown_request = False
            self._is_shut_down.set()

    def shutdown(self):
        cdef int err
        self._shutdown_request = True
        if self._wake_fd >= 0 and fs_waker_signal(self._wake_fd) < 0:
            err = errno
            # Non-blocking: EAGAIN means a wake-up is already pending.
            if not _is_eagain(err):
                _raise_errno(err)
        self._is_shut_down.wait()

    def wait_for_request(self, server, timeout):
        cdef pollfd p
        buffered = server._fs_buffered
        if buffered is not None and buffered.pending:
            return True
        p.fd = _listening_fd(server)
        p.events = _POLL_READ
        p.revents = 0
        if timeout is None:
            self._backoff.sleep_off(None)
            return _poll_retry(&p, 1, -1) > 0
        deadline = _monotonic() + <double>timeout
        if not self._backoff.sleep_off(deadline):
            return False
        return _poll_retry(&p, 1, _poll_ms(max(0.0, deadline - _monotonic()))) > 0

    def accept_failed(self, exc):
        self._backoff.failed(exc)
