"""StreamRequestHandler's rfile and wfile: socketserver's semantics on every
backend, and fastserver's coalesce_writes."""

from __future__ import annotations

import array
import io
import socket
import sys
import threading
from typing import Any, Callable, Dict, List

import pytest

from conftest import HOST, Impl, connect, recv_all, recv_until


def run_one(ss: Any, handle: Callable[[Any], None], client: Callable[[socket.socket], Any],
            **handler_attrs: Any) -> Any:
    """Serve one connection with handle(handler) while client(sock) runs;
    return client's result. Handler exceptions are re-raised here."""
    errors: List[BaseException] = []

    class Handler(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            try:
                handle(self)
            except BaseException as exc:
                errors.append(exc)
                raise

    for name, value in handler_attrs.items():
        setattr(Handler, name, value)

    class Server(ss.TCPServer):  # type: ignore[name-defined,misc]
        def handle_error(self, request: Any, client_address: Any) -> None:
            exc = sys.exc_info()[1]
            if exc is not None and not errors:
                errors.append(exc)  # raised outside handle(), e.g. in setup()

    with Server((HOST, 0), Handler) as server:
        thread = threading.Thread(target=server.handle_request)
        thread.start()
        with connect(server) as sock:
            result = client(sock)
        thread.join(10)
        assert not thread.is_alive()
    if errors:
        raise errors[0]
    return result


def test_write_returns_count_and_sends_before_returning(ref_impl: Impl) -> None:
    counts: List[int] = []

    def handle(h: Any) -> None:
        counts.append(h.wfile.write(b"hello\n"))
        # Would deadlock if the write were still buffered: the client
        # answers only after reading it.
        assert h.rfile.readline() == b"ack\n"
        counts.append(h.wfile.write(bytearray(b"x" * 100000)))
        counts.append(h.wfile.write(memoryview(b"abcdef")[1:4]))
        counts.append(h.wfile.write(array.array("i", [1, 2, 3])))

    def client(sock: socket.socket) -> bytes:
        assert recv_until(sock) == b"hello\n"
        sock.sendall(b"ack\n")
        return recv_all(sock)

    rest = run_one(ref_impl.ss, handle, client)
    assert counts == [6, 100000, 3, 3 * array.array("i").itemsize]
    assert rest == b"x" * 100000 + b"bcd" + array.array("i", [1, 2, 3]).tobytes()


def test_wfile_is_buffered_io(ref_impl: Impl) -> None:
    seen: Dict[str, Any] = {}

    def handle(h: Any) -> None:
        seen["buffered"] = isinstance(h.wfile, io.BufferedIOBase)
        seen["writable"] = h.wfile.writable()
        seen["readable"] = h.rfile.readable()

    run_one(ref_impl.ss, handle, recv_all)
    assert seen == {"buffered": True, "writable": True, "readable": True}


def test_wbufsize_buffers_until_flush(ref_impl: Impl) -> None:
    def handle(h: Any) -> None:
        h.wfile.write(b"buffered\n")
        h.rfile.readline()  # the client checks that nothing arrived yet
        h.wfile.flush()
        h.rfile.readline()

    def client(sock: socket.socket) -> bytes:
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sock.recv(100)
        sock.settimeout(10)
        sock.sendall(b"go\n")
        data = recv_until(sock)
        sock.sendall(b"done\n")
        return data

    assert run_one(ref_impl.ss, handle, client, wbufsize=-1) == b"buffered\n"


@pytest.mark.parametrize("rbufsize", [-1, 0, 1, 7, 8192])
def test_rbufsize_values_read_the_same(ref_impl: Impl, rbufsize: int) -> None:
    payload = b"".join(b"line %d %s\n" % (i, b"y" * (i * 37 % 300))
                       for i in range(200))

    def handle(h: Any) -> None:
        got = [h.rfile.readline(), h.rfile.read(5), h.rfile.readline(3)]
        got += list(h.rfile)
        h.wfile.write(repr(got).encode())

    def client(sock: socket.socket) -> bytes:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)

    got = eval(run_one(ref_impl.ss, handle, client, rbufsize=rbufsize))
    assert b"".join(got) == payload
    assert got[1] == payload[len(got[0]):len(got[0]) + 5]


def test_handler_timeout_raises_socket_timeout(ref_impl: Impl) -> None:
    def handle(h: Any) -> None:
        assert h.connection.gettimeout() == 0.2
        with pytest.raises(socket.timeout):
            h.rfile.readline()
        h.wfile.write(b"timed out\n")

    def client(sock: socket.socket) -> bytes:
        return recv_all(sock)

    assert run_one(ref_impl.ss, handle, client, timeout=0.2) == b"timed out\n"


def test_disable_nagle_algorithm(ref_impl: Impl) -> None:
    seen: List[int] = []

    def handle(h: Any) -> None:
        seen.append(h.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    run_one(ref_impl.ss, handle, recv_all, disable_nagle_algorithm=True)
    run_one(ref_impl.ss, handle, recv_all, disable_nagle_algorithm=False)
    run_one(ref_impl.ss, handle, recv_all)
    # The default differs on purpose (test_discrepancies.py): TCP_NODELAY.
    default = 0 if ref_impl.is_stdlib else 1
    assert [bool(v) for v in seen] == [True, False, bool(default)]


def test_finish_flushes_and_closes_files(ref_impl: Impl) -> None:
    files: List[Any] = []

    def handle(h: Any) -> None:
        files.extend([h.rfile, h.wfile])
        h.wfile.write(b"tail")

    assert run_one(ref_impl.ss, handle, recv_all, wbufsize=-1) == b"tail"
    assert all(f.closed for f in files)


def test_failing_final_flush_reaches_handle_error(ref_impl: Impl) -> None:
    # finish() swallows the flush error, but close() flushes again and
    # raises: socketserver reports it through handle_error, and so do we.
    def handle(h: Any) -> None:
        h.wfile.write(b"x" * 1000)
        h.connection.shutdown(socket.SHUT_WR)  # the final flush will fail

    with pytest.raises(BrokenPipeError):
        run_one(ref_impl.ss, handle, recv_all, wbufsize=-1)


# --- coalesce_writes (fastserver only) -----------------------------------

def nothing_pending(sock: socket.socket) -> bool:
    # A socket with a timeout waits out EAGAIN even under MSG_DONTWAIT.
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(100)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False


def test_coalesce_sends_before_blocking_on_rfile(impl: Impl) -> None:
    written, probed = threading.Event(), threading.Event()
    counts: List[int] = []

    def handle(h: Any) -> None:
        counts.append(h.wfile.write(b"one,"))
        counts.append(h.wfile.write(b"two\n"))
        written.set()
        probed.wait(5)
        line = h.rfile.readline()  # sends "one,two\n" first, then blocks
        h.wfile.write(b"got " + line)

    def client(sock: socket.socket) -> List[Any]:
        assert written.wait(5)
        held = nothing_pending(sock)
        probed.set()
        first = recv_until(sock)
        sock.sendall(b"three\n")
        return [held, first, recv_all(sock)]

    held, first, rest = run_one(impl.ss, handle, client, coalesce_writes=True)
    assert counts == [4, 4]
    assert held is True
    assert first == b"one,two\n"
    assert rest == b"got three\n"  # sent when handle() returned


def test_coalesce_flush_sends_now(impl: Impl) -> None:
    flushed = threading.Event()
    done = threading.Event()

    def handle(h: Any) -> None:
        h.wfile.write(b"now\n")
        h.wfile.flush()
        flushed.set()
        done.wait(5)

    def client(sock: socket.socket) -> bytes:
        assert flushed.wait(5)
        data = recv_until(sock)
        done.set()
        return data

    assert run_one(impl.ss, handle, client, coalesce_writes=True) == b"now\n"


def test_coalesce_limit_sends_when_full(impl: Impl) -> None:
    done = threading.Event()

    def handle(h: Any) -> None:
        for _ in range(10):
            h.wfile.write(b"z" * 100)  # 1000 bytes, limit 256
        done.wait(5)

    def client(sock: socket.socket) -> bytes:
        data = b""
        while len(data) < 768:  # everything past the limit went out
            data += sock.recv(4096)
        done.set()
        return data + recv_all(sock)

    assert run_one(impl.ss, handle, client, coalesce_writes=True,
                   coalesce_limit=256) == b"z" * 1000


def test_coalesce_survives_finish_override_without_flush(impl: Impl) -> None:
    def handle(h: Any) -> None:
        h.wfile.write(b"kept\n")

    def client(sock: socket.socket) -> bytes:
        return recv_all(sock)

    assert run_one(impl.ss, handle, client, coalesce_writes=True,
                   finish=lambda self: None) == b"kept\n"


def test_coalesce_with_unbuffered_rfile(impl: Impl) -> None:
    def handle(h: Any) -> None:
        for _ in range(3):
            line = h.rfile.readline()
            h.wfile.write(line.upper())

    def client(sock: socket.socket) -> List[bytes]:
        replies = []
        for word in (b"a\n", b"b\n", b"c\n"):
            sock.sendall(word)
            replies.append(recv_until(sock))
        return replies

    assert run_one(impl.ss, handle, client, coalesce_writes=True,
                   rbufsize=0) == [b"A\n", b"B\n", b"C\n"]


def test_coalesce_limit_must_be_positive(impl: Impl) -> None:
    def handle(h: Any) -> None:
        raise AssertionError("setup should have failed")

    with pytest.raises(ValueError):
        run_one(impl.ss, handle, recv_all, coalesce_writes=True,
                coalesce_limit=0)


def test_unbuffered_write_after_close_still_sends(ref_impl: Impl) -> None:
    # socketserver's unbuffered wfile has no closed check; code that relies
    # on it keeps working.
    counts: List[int] = []

    def handle(h: Any) -> None:
        h.wfile.close()
        counts.append(h.wfile.write(b"late"))

    assert run_one(ref_impl.ss, handle, recv_all) == b"late"
    assert counts == [4]


def test_coalescing_write_after_close_raises(impl: Impl) -> None:
    # A buffered write after close could never be sent: refuse it.
    def handle(h: Any) -> None:
        h.wfile.close()
        with pytest.raises(ValueError):
            h.wfile.write(b"x")

    run_one(impl.ss, handle, recv_all, coalesce_writes=True)
