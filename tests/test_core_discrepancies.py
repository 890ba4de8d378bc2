"""Every divergence ever found between the two cores, backend against backend.

In the style of msgpack's test_discrepancy.py: each test's docstring says
what differed (or still differs) and why, and each asserts both sides, so a
change on either side shows up here. A divergence that was fixed stays, with
both sides asserted equal. Add a test whenever a new one is found.
Divergences from socketserver itself are in test_discrepancies.py.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from typing import Any, Callable, List

import pytest

from conftest import HOST, unix_path
from core_modules import LoopServer, cython, pure

if cython is None:
    pytest.skip("the cython core is not built: nothing to compare",
                allow_module_level=True)

BOTH = (cython, pure)


def on_both(run: Callable[[Any], Any]) -> List[Any]:
    """run(core) for the cython core, then the pure one."""
    return [run(core) for core in BOTH]


def test_datagrams_are_received_in_batches() -> None:
    """The Cython receiver takes every queued datagram in one recvmmsg()
    and counts the rest as ``pending`` (the serve loop serves those without
    polling); the pure receiver takes one per recvfrom(), pending always 0."""
    def pending_after_one(core: Any) -> Any:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            server.bind((HOST, 0))
            server.settimeout(10)
            for data in (b"a", b"b", b"c"):
                client.sendto(data, server.getsockname())
            time.sleep(0.05)   # all three queued: the batch is what differs
            receiver = core.DatagramReceiver(server)
            first = receiver.recv(10)[0]
            return first, receiver.pending

    assert on_both(pending_after_one) == [(b"a", 2), (b"a", 0)]


def test_rfile_is_not_a_buffered_reader() -> None:
    """The Cython rfile is its own type (io.BufferedReader over SocketIO,
    fused into C), registered as an io.BufferedIOBase; it cannot be made
    directly. The pure rfile is sock.makefile('rb'), a real BufferedReader."""
    def kinds(core: Any) -> Any:
        a, b = socket.socketpair()
        with a, b:
            rfile, wfile = core.open_stream(a, -1, 0, 0)
            result = (isinstance(rfile, io.BufferedIOBase),
                      isinstance(rfile, io.BufferedReader))
            rfile.close()
            wfile.close()
            return result

    assert on_both(kinds) == [(True, False), (True, True)]
    with pytest.raises(TypeError):
        type(cython.open_stream(socket.socket(), -1, 0, 0)[0])()


def test_unbuffered_or_foreign_sockets_get_the_socket_modules_files() -> None:
    """Where the C reader cannot drive the socket (rbufsize 0, a
    non-blocking socket, a socket class overriding recv/send), the Cython
    core falls back on the socket module's files, as the pure core always
    does; the writers stay each core's own. The fallback used to be _pure's
    open_stream itself; it is now fastserver._sockfile, which both use."""
    class Foreign(socket.socket):
        def recv_into(self, *args: Any) -> int:  # type: ignore[override]
            return super().recv_into(*args)

    def rfile_types(core: Any) -> Any:
        kinds = []
        a, b = socket.socketpair()
        foreign = Foreign(a.family, a.type, fileno=a.detach())
        with foreign, b:
            for sock, rbufsize, blocking in ((foreign, -1, True), (foreign, 0, True),
                                             (b, -1, False)):
                sock.setblocking(blocking)
                rfile, wfile = core.open_stream(sock, rbufsize, 0, 10)
                kinds.append((type(rfile).__name__, type(wfile).__module__))
                wfile.close()
                rfile.close()
        return kinds

    assert on_both(rfile_types) == [
        [("BufferedReader", "fastserver._core"), ("FlushingSocketIO", "fastserver._core"),
         ("BufferedReader", "fastserver._core")],
        [("BufferedReader", "fastserver._pure"), ("FlushingSocketIO", "fastserver._pure"),
         ("BufferedReader", "fastserver._pure")],
    ]


def test_closed_server_socket_raises() -> None:
    """Fixed (issue 13, issue 17): with the server socket already closed,
    the Cython loop polled fd -1, which poll() skips, and so idled until
    shutdown() (handle_request() without a timeout blocked forever), while
    the pure loop raised ValueError. Both now raise ValueError at once."""
    def outcome(core: Any) -> Any:
        server = LoopServer()
        server.sock.close()
        loop = core.ServeLoop()
        results = []
        for call in (lambda: loop.wait_for_request(server, None),
                     lambda: loop.serve_forever(server, 30.0)):
            try:
                call()
                results.append("returned")
            except ValueError as exc:
                results.append(str(exc))
        stopper = threading.Thread(target=loop.shutdown, daemon=True)
        stopper.start()
        stopper.join(10)
        return results, stopper.is_alive()

    assert on_both(outcome) == [(["Invalid file descriptor: -1"] * 2, False)] * 2


def test_datagram_batches_shrink_for_large_packets() -> None:
    """With max_packet_size 1 MiB the Cython receiver takes at most 4
    datagrams per batch (the slots stay within DATAGRAM_SLOTS_BYTES; they
    were 64 slots of 1 MiB); the pure receiver still takes one."""
    def pending_after_one(core: Any) -> Any:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        server.bind(unix_path())
        server.settimeout(10)
        try:
            for i in range(10):
                client.sendto(b"%d" % i, server.getsockname())
            receiver = core.DatagramReceiver(server)
            first = receiver.recv(1 << 20)[0]
            return first, receiver.pending
        finally:
            name = server.getsockname()
            server.close()
            client.close()
            os.unlink(name)

    assert on_both(pending_after_one) == [(b"0", 3), (b"0", 0)]


def test_concurrent_readline_from_several_threads() -> None:
    """Three threads iterating one rfile: the Cython reader returns whole
    lines to each, because it never releases the GIL outside its lock.
    io.BufferedReader (the pure rfile) can interleave them, since its
    lock-free readline fast path runs while another thread's recv is in
    Python code: a line may be split between the threads (and a run here
    once saw more newlines than were sent). Only reaching EOF in every
    thread is certain there. Do not share an rfile between threads."""
    lines = [b"%05d\n" % i for i in range(3000)]

    def read_shared(core: Any) -> List[bytes]:
        a, b = socket.socketpair()
        with a, b:
            rfile, wfile = core.open_stream(a, 16, 0, 0)
            got: List[bytes] = []

            def reader() -> None:
                for line in rfile:
                    got.append(line)

            threads = [threading.Thread(target=reader) for _ in range(3)]
            for t in threads:
                t.start()
            b.sendall(b"".join(lines))
            b.shutdown(socket.SHUT_WR)
            for t in threads:
                t.join(30)
            assert not any(t.is_alive() for t in threads)   # all saw EOF
            rfile.close()
            wfile.close()
            return got

    ours, theirs = on_both(read_shared)
    assert sorted(ours) == lines
    assert theirs and all(type(piece) is bytes for piece in theirs)


def test_socket_class_patched_after_first_use_is_honoured() -> None:
    """Fixed (issue 13): the Cython core cached per class whether it may
    drive a socket with C calls, and never looked again, so a method patched
    onto the class after first use was ignored; the pure core always calls
    the socket's methods. Both now call the patched method."""
    class Conn(socket.socket):
        pass

    def sendall_calls(core: Any) -> int:
        calls = []
        a, b = socket.socketpair()
        sock = Conn(a.family, a.type, fileno=a.detach())
        with sock, b:
            for _ in range(2):
                core.open_stream(sock, -1, 0, 0)[1].write(b"x")
                Conn.sendall = lambda self, data: calls.append(data) or \
                    socket.socket.sendall(self, data)
            del Conn.sendall
        return len(calls)

    assert on_both(sendall_calls) == [1, 1]


def test_datagram_files_are_not_bytesio_instances() -> None:
    """A datagram handler's rfile and wfile: the pure core's are io.BytesIO;
    the Cython core's are its DatagramFile, which behaves as one (see
    test_datagram_fast) but is another class: isinstance(f, io.BytesIO) and
    type(f) tell them apart. Both are io.BufferedIOBase."""
    def kinds(core: Any) -> Any:
        f = core.DatagramFile(b"x")
        return isinstance(f, io.BytesIO), isinstance(f, io.BufferedIOBase)

    assert on_both(kinds) == [(False, True), (True, True)]


def test_datagram_file_argument_count_errors_are_worded_differently() -> None:
    """Too many arguments, or one passed by keyword, raise TypeError on
    both; the message is Cython's on the Cython core ("read() takes at most
    1 positional argument (2 given)", "read() got an unexpected keyword
    argument 'size'") and CPython's on BytesIO ("read expected at most 1
    argument, got 2", "BytesIO.read() takes no keyword arguments")."""
    def errors(core: Any) -> Any:
        f = core.DatagramFile(b"abc")
        got = []
        for call in (lambda: f.read(1, 2), lambda: f.read(size=1)):
            with pytest.raises(TypeError) as info:
                call()
            got.append(str(info.value))
        return got, f.read()

    ours, theirs = on_both(errors)
    assert ours[1] == theirs[1] == b"abc"   # nothing was read
    assert ours[0] != theirs[0]


def test_finish_assigned_on_the_handler_by_handle() -> None:
    """The Cython core does a plain DatagramRequestHandler's __init__,
    setup() and finish() itself when the class keeps them; it looks at the
    class, once per class version, not at the instance. A handle() that
    assigns self.finish (an instance attribute) is ignored there;
    BaseRequestHandler.__init__ (the pure core, and any class that is not
    plain) calls it. A class attribute, or a subclass, is seen by both."""
    import fastserver

    def reply(core: Any) -> Any:
        class Handler(fastserver.DatagramRequestHandler):
            def handle(self) -> None:
                self.wfile.write(b"handled")
                self.finish = lambda: self.socket.sendto(b"instance", self.client_address)

        class Server(fastserver.UDPServer):
            backend = core.BACKEND

        with Server((HOST, 0), Handler) as server, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"x", server.server_address)
            server.handle_request()
            return client.recv(100)

    assert on_both(reply) == [b"handled", b"instance"]
