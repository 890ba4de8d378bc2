# The serve loop's step for a ready server, and in it UDPServer's request
# path in C. See _core.pxd.
#
# For a plain UDPServer, the path from _handle_request_noblock() to
# close_request() is eight Python frames per datagram that do nothing a
# server could see besides receiving it, calling the handler and reporting
# its error: in the udp bench (callgrind, the server's user space) a quarter
# of a request's instructions (15.3k before, 11.4k without them). A server
# with its own process_request() (ThreadingUDPServer) is spared the first
# four, up to that call.


def _judge_datagram_receiver(cls):
    """May the serve loop stand in for cls's receiving of a request?"""
    _import_layers()
    return issubclass(cls, _servers_module.UDPServer) and all(
        getattr(cls, name, None) is value
        for name, value in _servers_module._DATAGRAM_RECEIVE_DEFAULTS)


def _judge_datagram_processor(cls):
    """... and for its processing (the handler called in this thread)?"""
    _import_layers()
    return all(getattr(cls, name, None) is value
               for name, value in _servers_module._DATAGRAM_PROCESS_DEFAULTS)


cdef _ClassVerdicts _plain_datagram_receivers = _ClassVerdicts(_judge_datagram_receiver)
cdef _ClassVerdicts _plain_datagram_processors = _ClassVerdicts(_judge_datagram_processor)


cdef extern from "Python.h":
    # The instance's own __dict__, whatever the class calls __dict__.
    object PyObject_GenericGetDict(object obj, void *context)


# The names of servers._DATAGRAM_RECEIVE_DEFAULTS and _PROCESS_DEFAULTS.
cdef tuple _DATAGRAM_SERVER_NAMES = None


cdef bint _instance_overrides(ServeLoop loop, object server) except -1:
    """Does the instance have one of the request path's names set on it
    (server.verify_request = ...), which the class's verdict cannot see?
    Looked at again whenever its attributes are a new dict or a new number
    of them: setting an override adds a name, since one already there
    would have been found."""
    global _DATAGRAM_SERVER_NAMES
    attributes = PyObject_GenericGetDict(server, NULL)
    if attributes is loop._checked_attributes and len(attributes) == loop._checked_count:
        return False
    if _DATAGRAM_SERVER_NAMES is None:
        _DATAGRAM_SERVER_NAMES = tuple(
            name for name, _ in _servers_module._DATAGRAM_RECEIVE_DEFAULTS
            + _servers_module._DATAGRAM_PROCESS_DEFAULTS)
    for name in _DATAGRAM_SERVER_NAMES:
        if name in attributes:
            loop._checked_attributes = None
            return True
    loop._checked_attributes = attributes
    loop._checked_count = len(attributes)
    return False


cdef int _serve_ready(ServeLoop loop, object server) except -1:
    """server._handle_request_noblock(), for the serve loop."""
    cls = type(server)
    if (not _plain_datagram_receivers.verdict(cls)
            or _instance_overrides(loop, server)):
        server._handle_request_noblock()
        return 0
    # What the Python path would hand to someone else: an observer, a lobby,
    # a receiver of another core.
    receiver = server._fs_buffered
    if (server.request_observer is not None or server._fs_lobby is not None
            or (receiver is not None and type(receiver) is not DatagramReceiver)):
        server._handle_request_noblock()
        return 0
    # get_request()
    sock = server.socket
    if receiver is None or (<DatagramReceiver>receiver)._sock is not sock:
        receiver = DatagramReceiver(sock)
        server._fs_buffered = receiver
    try:
        data, client_address = (<DatagramReceiver>receiver).recv(server.max_packet_size)
    except OSError as exc:
        server._fs_loop.accept_failed(exc)
        return 0
    request = (data, server.socket)
    # verify_request() accepts; _fs_dispatch() -> process_request(): the
    # server's own (ThreadingMixIn's, say), or UDPServer's -> finish_request(),
    # whose shutdown_request() and close_request() have nothing to do for a
    # datagram with no observer.
    try:
        if _plain_datagram_processors.verdict(cls):
            _handle_datagram(server.RequestHandlerClass, request, client_address, server)
        else:
            server.process_request(request, client_address)
    except Exception:
        server.handle_error(request, client_address)
        server._fs_end_request(request)
    except BaseException:
        server._fs_end_request(request)
        raise
    return 0
