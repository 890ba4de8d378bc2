"""A datagram handler's rfile and wfile, and the handler run by the core.

On the cython backend, DatagramRequestHandler's rfile and wfile are the
core's DatagramFile, and a handler class that keeps fastserver's __init__,
setup() and finish() has their work done in C (core.handle_datagram). Both
must be invisible:

- DatagramFile against io.BytesIO for random call sequences (hypothesis):
  every result, every exception (type and message), the final contents,
  position and state; on each core (the pure core's is BytesIO itself);
- whole servers on each backend and on socketserver itself, over real
  loopback UDP, with handlers that override setup/finish/__init__, write
  nothing, call BytesIO's unusual methods, raise, replace their files,
  or are patched between requests.
"""

from __future__ import annotations

import abc
import copy
import functools
import io
import pickle
import socket
import socketserver
import sys
import threading
import weakref
from types import ModuleType
from typing import Any, Callable, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import HOST, Impl, serving
from test_core_writer_differential import as_kind
from core_modules import core  # noqa: F401 - the fixture

from fastserver import _contract

# --- DatagramFile against io.BytesIO -----------------------------------------------

contents = st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\r\n", b"\0", b"xyz\n"]),
                    max_size=12).map(b"".join)
# Sizes as a handler might pass them, and the unusual ones that BytesIO
# rejects or clamps in its own way.
sizes = st.one_of(st.none(), st.integers(-3, 40),
                  st.sampled_from([2 ** 63 - 1, 2 ** 63, -2 ** 63, 2 ** 70,
                                   1.5, "3", True, b"1"]))
positions = st.one_of(st.integers(-8, 60),
                      st.sampled_from([2 ** 63 - 1, 2 ** 63, -2 ** 63 - 1, 2 ** 70,
                                       None, 1.0, "0", False]))
whences = st.one_of(st.integers(-1, 3), st.sampled_from([1.0, True, None, 2 ** 70]))
kinds = st.sampled_from(["bytes", "bytearray", "memoryview", "array", "strided",
                         "str", "int"])

operations = st.one_of(
    st.tuples(st.sampled_from(["read", "read1", "readline", "readlines",
                               "truncate"]), sizes),
    st.tuples(st.just("readinto"), st.integers(0, 40),
              st.sampled_from(["bytearray", "memoryview", "bytes", "strided"])),
    st.tuples(st.sampled_from(["write", "writelines"]), contents, kinds),
    st.tuples(st.just("seek"), positions, whences),
    st.tuples(st.sampled_from([
        "next", "list", "tell", "getvalue", "close", "closed", "flush",
        "readable", "writable", "seekable", "isatty", "getbuffer", "enter",
        "exit", "fileno", "readinto1", "detach", "setattr", "copy"])),
)


# The common calls only, with plain arguments: sequences that stay in the
# Cython core's own code rather than handing over to a BytesIO early.
plain_sizes = st.one_of(st.none(), st.integers(-2, 30))
plain_operations = st.one_of(
    st.tuples(st.sampled_from(["read", "read1", "readline", "readlines"]), plain_sizes),
    st.tuples(st.just("readinto"), st.integers(0, 30),
              st.sampled_from(["bytearray", "memoryview"])),
    st.tuples(st.sampled_from(["write", "writelines"]), contents,
              st.sampled_from(["bytes", "bytearray", "memoryview", "array"])),
    st.tuples(st.just("seek"), st.integers(-30, 60), st.integers(0, 2)),
    st.tuples(st.sampled_from(["next", "list", "tell", "getvalue", "flush",
                               "readable", "writable", "seekable", "isatty",
                               "enter", "setattr"])),
)


def _as_kind(data: bytes, kind: str) -> Any:
    if kind in ("bytearray", "memoryview", "array"):
        return as_kind(data, kind)
    if kind == "strided":
        return memoryview(data + data)[::2]
    if kind == "str":
        return data.decode("latin-1")
    if kind == "int":
        return len(data)
    return data


def _buffer(size: int, kind: str) -> Any:
    if kind == "bytes":
        return bytes(size)           # not writable
    if kind == "strided":
        return memoryview(bytearray(2 * size))[::2]
    if kind == "memoryview":
        return memoryview(bytearray(size))
    return bytearray(size)


def _apply(f: Any, op: Tuple[Any, ...]) -> Any:
    name = op[0]
    if name in ("read", "read1", "readline", "readlines", "truncate"):
        return getattr(f, name)(op[1])
    if name == "readinto":
        buf = _buffer(op[1], op[2])
        n = f.readinto(buf)
        return n, bytes(buf)
    if name == "write":
        return f.write(_as_kind(op[1], op[2]))
    if name == "writelines":
        pieces = op[1].split(b"\n")
        return f.writelines(_as_kind(p, op[2]) for p in pieces)
    if name == "seek":
        return f.seek(op[1], op[2])
    if name == "next":
        return next(f)
    if name == "list":
        return list(f)
    if name == "closed":
        return f.closed
    if name == "getbuffer":
        with f.getbuffer() as view:
            return bytes(view)
    if name == "enter":
        return f.__enter__() is f
    if name == "exit":
        return f.__exit__(None, None, None)
    if name == "readinto1":
        buf = bytearray(5)
        return f.readinto1(buf), bytes(buf)
    if name == "setattr":
        f.name = "packet"
        return f.name
    if name == "copy":
        return copy.copy(f).getvalue()
    return getattr(f, name)()


def _run(f: Any, sequence: List[Tuple[Any, ...]]) -> List[Any]:
    log: List[Any] = []
    for op in sequence:
        try:
            log.append((op[0], _apply(f, op)))
        except StopIteration:
            log.append((op[0], "StopIteration"))
        except Exception as exc:  # noqa: BLE001 - compared below
            log.append((op[0], type(exc), str(exc)))
    log.append(("closed at the end", f.closed))
    if not f.closed:
        log.append(("at the end", f.tell(), f.getvalue()))
    return log


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.one_of(st.none(), contents), as_bytearray=st.booleans(),
       sequence=st.lists(operations, max_size=14))
def test_datagram_file_behaves_as_bytesio(core: ModuleType, initial: Optional[bytes],
                                          as_bytearray: bool,
                                          sequence: List[Tuple[Any, ...]]) -> None:
    def make(cls: Any) -> Any:
        if initial is None:
            return cls()
        return cls(bytearray(initial) if as_bytearray else initial)

    assert _run(make(core.DatagramFile), sequence) == _run(make(io.BytesIO), sequence)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.one_of(st.none(), contents),
       sequence=st.lists(plain_operations, max_size=30),
       end=st.sampled_from([(), ("close",), ("exit",)]))
def test_plain_calls_behave_as_bytesio(core: ModuleType, initial: Optional[bytes],
                                       sequence: List[Tuple[Any, ...]],
                                       end: Tuple[Any, ...]) -> None:
    sequence = sequence + ([end, ("read", None)] if end else [])

    def make(cls: Any) -> Any:
        return cls() if initial is None else cls(initial)

    assert _run(make(core.DatagramFile), sequence) == _run(make(io.BytesIO), sequence)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.binary(max_size=300), max_size=60),
       kind=st.sampled_from(["bytes", "bytearray", "memoryview"]))
def test_many_writes_and_reads_back(core: ModuleType, pieces: List[bytes],
                                    kind: str) -> None:
    # Growth past the first allocation, then everything read back.
    theirs = io.BytesIO()
    ours = core.DatagramFile()
    for piece in pieces:
        assert ours.write(_as_kind(piece, kind)) == theirs.write(_as_kind(piece, kind))
    assert ours.getvalue() == theirs.getvalue() == b"".join(pieces)
    assert ours.seek(0) == theirs.seek(0) == 0
    assert ours.read() == theirs.read()


def test_datagram_file_is_an_io_object(core: ModuleType) -> None:
    f = core.DatagramFile(b"ab\ncd")
    assert isinstance(f, _contract.DatagramFile)
    assert isinstance(f, io.BufferedIOBase) and isinstance(f, io.IOBase)
    assert weakref.ref(f)() is f
    assert not hasattr(f, "peek") and not hasattr(f, "raw")
    f.name = "rfile"
    f.readline()
    clone = pickle.loads(pickle.dumps(f))
    assert type(clone) is io.BytesIO and clone.name == "rfile"
    assert clone.read() == b"cd" and clone.getvalue() == b"ab\ncd"
    f.seek(0)
    with f as same:
        assert same is f and same.readline() == b"ab\n"
    assert f.closed


def test_text_wrapper_over_the_files(core: ModuleType) -> None:
    reader = io.TextIOWrapper(core.DatagramFile("héllo\nworld\n".encode()),
                              encoding="utf-8")
    assert reader.readlines() == ["héllo\n", "world\n"]
    wfile = core.DatagramFile()
    writer = io.TextIOWrapper(wfile, encoding="utf-8", write_through=True)
    writer.write("ünïcode\n")
    writer.detach()
    assert wfile.getvalue() == "ünïcode\n".encode()


def test_client_addresses_as_the_socket_module_gives_them(core: ModuleType) -> None:
    # The whole of 127.0.0.0/8 is loopback: every octet value in every
    # position but the first, sent from and compared with getsockname().
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((HOST, 0))
        receiver = core.DatagramReceiver(server)
        for v in range(256):
            for host in ("127.%d.%d.%d" % (v, 255 - v, v | 1), "127.1.%d.%d" % (v // 2, v)):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                    client.bind((host, 0))
                    client.sendto(b"x", server.getsockname())
                    assert receiver.recv(100) == (b"x", client.getsockname())


# --- whole servers -----------------------------------------------------------------

class Reply:
    """What one datagram got back: the reply (None for none), and the
    errors the server's handle_error() saw meanwhile, as (type, message)."""

    def __init__(self, data: Optional[bytes], errors: List[Tuple[type, str]]) -> None:
        self.data = data
        self.errors = errors

    def __repr__(self) -> str:
        return "Reply(%r, %r)" % (self.data, self.errors)


def exchange(impl: Impl, handler: Any, payloads: List[bytes],
             kind: str = "UDPServer", between: Optional[Callable[[int], None]] = None,
             **attrs: Any) -> List[Tuple[Optional[bytes], List[Tuple[type, str]]]]:
    """Send each payload in turn to a server of ``kind`` serving
    ``handler``; for each, the reply (None when there was none) and the
    errors that handle_error() saw. The handler sets server.done after each
    request (it runs in finish_request(), around the handler)."""
    done = threading.Event()
    errors: List[Tuple[type, str]] = []

    class Server(getattr(impl.ss, kind)):  # type: ignore[misc]
        def finish_request(self, request: Any, client_address: Any) -> None:
            try:
                super().finish_request(request, client_address)
            finally:
                done.set()

        def handle_error(self, request: Any, client_address: Any) -> None:
            exc = sys.exc_info()[1]
            errors.append((type(exc), str(exc)))

    for name, value in attrs.items():
        setattr(Server, name, value)
    server = Server((HOST, 0), handler)
    results: List[Tuple[Optional[bytes], List[Tuple[type, str]]]] = []
    with serving(server, poll_interval=0.02), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.bind((HOST, 0))
        for i, payload in enumerate(payloads):
            done.clear()
            client.sendto(payload, server.server_address)
            assert done.wait(10), "the request was not handled"
            # A reply is sent before finish_request() returns, and loopback
            # delivers it before sendto() returns: it is there or never.
            client.setblocking(False)
            try:
                data: Optional[bytes] = client.recv(1 << 16)
            except BlockingIOError:
                data = None
            client.settimeout(10)
            results.append((data, list(errors)))
            del errors[:]
            if between is not None:
                between(i)
    return results


KINDS = ["UDPServer", "ThreadingUDPServer"]


def echo(impl: Impl) -> Any:
    class Echo(impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            self.wfile.write(self.rfile.read())
    return Echo


@pytest.mark.parametrize("kind", KINDS)
def test_echo_and_an_empty_reply(ref_impl: Impl, kind: str) -> None:
    class Silent(ref_impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            self.rfile.read()

    large = b"x" * 8192   # max_packet_size
    assert exchange(ref_impl, echo(ref_impl), [b"one", b"", large], kind) == [
        (b"one", []), (b"", []), (large, [])]
    # Nothing written: an empty datagram all the same.
    assert exchange(ref_impl, Silent, [b"quiet"], kind) == [(b"", [])]


@pytest.mark.parametrize("kind", KINDS)
def test_overrides_run(ref_impl: Impl, kind: str) -> None:
    base = ref_impl.ss.DatagramRequestHandler

    class WithSetup(base):  # type: ignore[valid-type,misc]
        def setup(self) -> None:
            super().setup()
            self.wfile.write(b"setup:")

        def handle(self) -> None:
            self.wfile.write(self.rfile.read())

    class WithFinish(WithSetup):
        setup = base.setup

        def finish(self) -> None:
            self.wfile.write(b":finish")
            super().finish()

    class WithInit(base):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any) -> None:
            self.marker = b"init:"
            super().__init__(*args)

        def handle(self) -> None:
            self.wfile.write(self.marker + self.rfile.read())

    class WithHandled(base):  # type: ignore[valid-type,misc]
        # fastserver's hook after handle(); a plain attribute elsewhere.
        def _fs_handled(self) -> None:
            self.wfile.write(b"+handled")

        def handle(self) -> None:
            self.wfile.write(b"data")

    assert exchange(ref_impl, WithSetup, [b"a"], kind) == [(b"setup:a", [])]
    assert exchange(ref_impl, WithFinish, [b"b"], kind) == [(b"b:finish", [])]
    assert exchange(ref_impl, WithInit, [b"c"], kind) == [(b"init:c", [])]
    handled = b"data" if ref_impl.is_stdlib else b"data+handled"
    assert exchange(ref_impl, WithHandled, [b"d"], kind) == [(handled, [])]


def test_unusual_file_methods(ref_impl: Impl) -> None:
    class Unusual(ref_impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            rfile, wfile = self.rfile, self.wfile
            assert isinstance(rfile, io.BufferedIOBase)
            with rfile.getbuffer() as view:
                whole = bytes(view)
            first = rfile.readline()
            rest = list(rfile)
            rfile.seek(0)
            buf = bytearray(3)
            rfile.readinto(buf)
            wfile.writelines([whole, b"|", first])
            wfile.seek(1)
            wfile.write(b"*")
            wfile.truncate(wfile.tell() + 4)
            wfile.seek(0, io.SEEK_END)
            text = io.TextIOWrapper(wfile, encoding="utf-8", write_through=True)
            text.write("|%d|%s|" % (len(rest), bytes(buf).decode()))
            text.detach()
            wfile.name = "reply"
            assert wfile.name == "reply" and not wfile.closed

    assert exchange(ref_impl, Unusual, [b"ab\ncd\nef"], "UDPServer") == [
        (b"a*\ncd\n|2|ab\n|", [])]


@pytest.mark.parametrize("kind", KINDS)
def test_a_raise_in_handle_still_replies(ref_impl: Impl, kind: str) -> None:
    class Raising(ref_impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            self.wfile.write(b"partial")
            raise RuntimeError("boom")

    assert exchange(ref_impl, Raising, [b"x", b"y"], kind) == [
        (b"partial", [(RuntimeError, "boom")])] * 2


def test_files_replaced_or_closed_by_handle(ref_impl: Impl) -> None:
    class Replacing(ref_impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            self.wfile.write(b"lost")
            self.wfile = io.BytesIO(b"mine")

    class Closing(ref_impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            self.wfile.write(b"lost")
            self.wfile.close()

    class NotAFile(ref_impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            self.wfile = None

    assert exchange(ref_impl, Replacing, [b"a"]) == [(b"mine", [])]
    assert exchange(ref_impl, Closing, [b"b"]) == [
        (None, [(ValueError, "I/O operation on closed file.")])]
    assert exchange(ref_impl, NotAFile, [b"c"]) == [
        (None, [(AttributeError, "'NoneType' object has no attribute 'getvalue'")])]


def test_finish_failing_after_handle_raised(ref_impl: Impl) -> None:
    # finish() runs after handle() raised; its own error reaches
    # handle_error() with handle()'s as its context.
    class Both(ref_impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            self.wfile.close()
            raise RuntimeError("boom")

    seen: List[Any] = []

    class Server(ref_impl.ss.UDPServer):  # type: ignore[name-defined]
        def handle_error(self, request: Any, client_address: Any) -> None:
            exc = sys.exc_info()[1]
            seen.append((type(exc), str(exc), type(exc.__context__),
                         str(exc.__context__)))

    with Server((HOST, 0), Both) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"x", server.server_address)
        server.handle_request()
    assert seen == [(ValueError, "I/O operation on closed file.",
                     RuntimeError, "boom")]


def test_reply_to_another_address_or_server(ref_impl: Impl) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.settimeout(10)
        other.bind((HOST, 0))

        class Elsewhere(ref_impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
            def handle(self) -> None:
                self.wfile.write(self.rfile.read())
                self.client_address = other.getsockname()
                # Another object as the server: finish() takes its core
                # from there (the process default; the stdlib has none).
                self.server = object()

        assert exchange(ref_impl, Elsewhere, [b"there"]) == [(None, [])]
        assert other.recv(100) == b"there"


def test_patches_between_requests_are_seen(ref_impl: Impl,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    handler = echo(ref_impl)
    base = ref_impl.ss.DatagramRequestHandler

    def patched_finish(self: Any) -> None:
        self.wfile.write(b"!")
        base.finish(self)

    original_setup = base.setup

    def patched_setup(self: Any) -> None:
        original_setup(self)
        self.wfile.write(b"base:")

    def between(i: int) -> None:
        if i == 0:
            handler.finish = patched_finish   # on the class itself
        elif i == 1:
            del handler.finish
        elif i == 2:
            monkeypatch.setattr(base, "setup", patched_setup)   # on the base
        elif i == 3:
            monkeypatch.undo()

    assert exchange(ref_impl, handler, [b"a", b"b", b"c", b"d", b"e"],
                    between=between) == [
        (b"a", []), (b"b!", []), (b"c", []), (b"base:d", []), (b"e", [])]


def test_classes_the_core_cannot_stand_in_for(ref_impl: Impl) -> None:
    base = echo(ref_impl)
    seen: List[Any] = []

    class Intercepted(base):  # type: ignore[valid-type,misc]
        @property
        def packet(self) -> bytes:
            return self._packet  # type: ignore[no-any-return]

        @packet.setter
        def packet(self, value: bytes) -> None:
            seen.append(value)
            self._packet = value.upper()

        def handle(self) -> None:
            self.wfile.write(self.packet)

    class Abstract(base, metaclass=abc.ABCMeta):  # type: ignore[valid-type,misc]
        pass

    class Slotted(base):  # type: ignore[valid-type,misc]
        __slots__ = ("rfile",)

    class Attributes(base):  # type: ignore[valid-type,misc]
        def __setattr__(self, name: str, value: Any) -> None:
            seen.append(name)
            super().__setattr__(name, value)

    assert exchange(ref_impl, Intercepted, [b"low"]) == [(b"LOW", [])]
    assert seen == [b"low"]
    assert exchange(ref_impl, Abstract, [b"abc"]) == [(b"abc", [])]
    assert exchange(ref_impl, Slotted, [b"slot"]) == [(b"slot", [])]
    assert exchange(ref_impl, functools.partial(base), [b"partial"]) == [(b"partial", [])]
    del seen[:]
    assert exchange(ref_impl, Attributes, [b"set"]) == [(b"set", [])]
    assert seen == ["request", "client_address", "server", "packet", "socket",
                    "rfile", "wfile"]


def test_a_request_that_does_not_unpack(ref_impl: Impl) -> None:
    def get_request(self: Any) -> Tuple[Any, Any]:
        data, address = self.socket.recvfrom(self.max_packet_size)
        return (data, self.socket, "extra"), address

    assert exchange(ref_impl, echo(ref_impl), [b"x"], get_request=get_request) == [
        (None, [(ValueError, "too many values to unpack (expected 2)")])]


def test_a_stdlib_handler_on_fastserver(impl: Impl) -> None:
    class Stdlib(socketserver.DatagramRequestHandler):
        def handle(self) -> None:
            assert type(self.rfile) is io.BytesIO   # its own setup()
            self.wfile.write(self.rfile.read())

    assert exchange(impl, Stdlib, [b"std"]) == [(b"std", [])]


def test_handler_files_are_the_cores(impl: Impl) -> None:
    types: List[type] = []

    class Recording(impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            types.extend((type(self.rfile), type(self.wfile)))

    class Overriding(Recording):
        def setup(self) -> None:
            super().setup()

    # The core's files where it stands in for setup(); setup()'s own, as
    # today, where the class overrides it.
    exchange(impl, Recording, [b"a"])
    exchange(impl, Overriding, [b"b"])
    assert types == [impl.core.DatagramFile] * 2 + [io.BytesIO] * 2


def test_a_current_preamble_is_applied(impl: Impl) -> None:
    # The core stands in for __init__ only when no connection preamble is
    # current; one that is (its request and server are this handler's)
    # gives the handler its attributes, as BaseRequestHandler.__init__ does.
    from fastserver import preamble

    got: List[Any] = []

    class Handler(impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            got.append((getattr(self, "proxy_address", None), self.rfile.read()))

    server = impl.ss.UDPServer((HOST, 0), Handler)
    with server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((HOST, 0))
        request = (b"data", server.socket)
        state = preamble.ConnectionState(server, request, client.getsockname(), None)
        state.attributes["proxy_address"] = ("192.0.2.1", 4000)
        token = preamble._current.set(state)
        try:
            server.finish_request(request, client.getsockname())
        finally:
            preamble._current.reset(token)
        server.finish_request(request, client.getsockname())
        assert client.recv(100) == client.recv(100) == b""
    assert got == [(("192.0.2.1", 4000), b"data"), (None, b"data")]
