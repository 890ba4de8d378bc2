"""``python -m fastserver run`` with TLS: --certfile and its companions,
their errors, and the certificate reload on SIGHUP, on each backend.

Each server is the command itself in a subprocess; clients are real TLS
clients on loopback that verify the server's certificate. Certificates are
made with the ``openssl`` command (tests/tlscerts.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest

import tlscerts
from conftest import Impl, backend_env, unix_path
from test_cli_errors import error_line, fastserver_run, without_file_permission_override

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))

from supervised import Supervised, connect, recv_line  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process inspection through /proc")

TCP = ["--bind", "127.0.0.1:0"]

# The handler the servers run: every line is answered with one JSON line
# saying who the client is and what TLS the handler sees (and logged at
# INFO, for requests no test client makes: HAProxy's health checks). Written into the
# test's directory (tls_app.py) and put on the server's PYTHONPATH.
TLS_APP = '''\
import json
import logging
import os
import ssl

import fastserver

log = logging.getLogger("tls_app")


class TLSInfo(fastserver.StreamRequestHandler):
    def handle(self):
        request = self.request
        tls = isinstance(request, ssl.SSLSocket)
        peer = request.getpeercert() if tls else None
        subject = dict(item[0] for item in peer["subject"]) if peer else {}
        proxy = getattr(self, "proxy_address", None)
        try:
            for line in self.rfile:
                info = {
                    "client": list(self.client_address[:2])
                    if isinstance(self.client_address, tuple) else self.client_address,
                    "proxy": list(proxy[:2]) if isinstance(proxy, tuple) else proxy,
                    "tls": request.version() if tls else None,
                    "peer_cn": subject.get("commonName"),
                    "line": line.decode("latin-1"),
                    "pid": os.getpid(),
                    "backend": fastserver.backend,
                    "server": type(self.server).__name__,
                }
                log.info("%s %s %r", info["client"], info["tls"], line)
                self.wfile.write(json.dumps(info).encode() + b"\\n")
        except (ConnectionResetError, ssl.SSLError):
            pass  # health checks and clients that go away
'''


def tls_app_env(impl: Impl, directory: Path) -> Dict[str, str]:
    """The backend's environment, with tls_app.py (written into directory)
    importable by the server."""
    (directory / "tls_app.py").write_text(TLS_APP)
    env = backend_env(impl.name)
    env["PYTHONPATH"] = str(directory) + os.pathsep + env["PYTHONPATH"]
    return env


@dataclass(frozen=True)
class Session:
    """What the client saw of the server's side of one TLS connection."""
    version: Optional[str]
    der: Optional[bytes]      # the server's certificate
    serial: int
    local_address: Any        # the client's end of the connection


def tls_exchange(family: int, address: Any, context: ssl.SSLContext,
                 line: bytes = b"hello\n", source: Optional[str] = None,
                 timeout: float = 10.0) -> Tuple[Dict[str, Any], Session]:
    """One TLS connection: send line; the server's JSON answer, and what
    the client saw of the session."""
    raw = socket.socket(family, socket.SOCK_STREAM)
    raw.settimeout(timeout)
    try:
        if source is not None:
            raw.bind((source, 0))
        raw.connect(address)
        sock = context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise
    with sock:
        sock.sendall(line)
        answer = recv_line(sock)
        if not answer:
            raise ConnectionError("closed without an answer")
        cert = sock.getpeercert()
        assert cert is not None
        session = Session(sock.version(), sock.getpeercert(binary_form=True),
                          int(str(cert["serialNumber"]), 16), sock.getsockname())
        return json.loads(answer), session


def stop(sup: Supervised) -> None:
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(15) == 0, sup.log


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """One set of certificates and broken files for the module's tests."""
    d = tmp_path_factory.mktemp("certs")
    ca = tlscerts.make_ca(d)
    server = tlscerts.make_cert(d, ca, "server")
    other = tlscerts.make_cert(d, ca, "other", key_type="rsa")
    client = tlscerts.make_cert(d, ca, "client")
    stranger_ca = tlscerts.make_ca(d, "stranger-ca")
    stranger = tlscerts.make_cert(d, stranger_ca, "stranger")
    files = {"ca": ca, "server": server, "other": other, "client": client,
             "stranger": stranger, "dir": str(d)}
    files["encrypted"] = tlscerts.encrypt_key(d, server.key, "secret")
    for name, text in (("garbage", "this is not PEM\n"),
                       ("half-cert", open(server.cert).read()[:300]),
                       ("half-key", open(server.key).read()[:120]),
                       ("empty", "")):
        path = d / name
        path.write_text(text)
        files[name] = str(path)
    return files


# --- serving ---------------------------------------------------------------


@pytest.mark.parametrize("variant", ["threading", "thread-pool", "tcpserver", "unix"])
def test_serves_tls(impl: Impl, tmp_path: Path, certs: Dict[str, Any], variant: str) -> None:
    server = certs["server"]
    bind = {"threading": TCP, "thread-pool": TCP + ["--threads", "4"],
            "tcpserver": TCP + ["--server", "TCPServer"],
            "unix": ["--bind", "unix:" + unix_path()]}[variant]
    expected_class = {"threading": "ThreadingTCPServer", "thread-pool": "ThreadPoolTCPServer",
                      "tcpserver": "TCPServer", "unix": "ThreadingUnixStreamServer"}[variant]
    context = tlscerts.client_context(certs["ca"].cert)
    with Supervised.command(["tls_app:TLSInfo", "--workers", "2", "--certfile", server.cert,
                             "--keyfile", server.key] + bind,
                            tls_app_env(impl, tmp_path)) as sup:
        family, address = sup.address()
        for n in range(3):
            info, session = tls_exchange(family, address, context, b"line %d\n" % n)
            assert info["line"] == "line %d\n" % n
            assert info["tls"] == session.version and info["tls"] in ("TLSv1.2", "TLSv1.3")
            assert session.der == tlscerts.der(server.cert)
            assert session.serial == server.serial
            assert info["server"] == expected_class and info["backend"] == impl.name
            assert info["peer_cn"] is None  # no client certificate asked for
        # Plain bytes on the TLS port: closed unanswered, and serving goes on.
        with connect(family, address) as plain:
            plain.sendall(b"hello\n")
            try:
                answer = recv_line(plain)
            except ConnectionResetError:
                answer = b""
            assert b"hello" not in answer
        assert tls_exchange(family, address, context)[0]["line"] == "hello\n"
        assert "TLS with %s and %s" % (server.cert, server.key) in sup.log
        stop(sup)


def test_handshake_timeout_option(impl: Impl, tmp_path: Path, certs: Dict[str, Any]) -> None:
    """--tls-handshake-timeout 0.5: a client that sends nothing is closed
    long before the default 10 s, and real clients are served meanwhile."""
    server = certs["server"]
    context = tlscerts.client_context(certs["ca"].cert)
    with Supervised.command(["tls_app:TLSInfo", "--workers", "1", "--threads", "2",
                             "--certfile", server.cert, "--keyfile", server.key,
                             "--tls-handshake-timeout", "0.5", "--log-level", "debug"] + TCP,
                            tls_app_env(impl, tmp_path)) as sup:
        family, address = sup.address()
        silent = [connect(family, address, timeout=15) for _ in range(3)]
        started = time.monotonic()
        try:
            # More silent clients than pool threads: still served.
            assert tls_exchange(family, address, context)[0]["line"] == "hello\n"
            for sock in silent:
                try:
                    assert sock.recv(1) == b""
                except ConnectionResetError:
                    pass
            assert time.monotonic() - started < 5.0
        finally:
            for sock in silent:
                sock.close()
        sup.wait_for(r"DEBUG fastserver\.tls: ")  # the drop is logged at DEBUG
        stop(sup)


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_verify_client(impl: Impl, tmp_path: Path, certs: Dict[str, Any], mode: str) -> None:
    server, ca = certs["server"], certs["ca"]
    with Supervised.command(["tls_app:TLSInfo", "--workers", "1", "--certfile", server.cert,
                             "--keyfile", server.key, "--cafile", ca.cert,
                             "--verify-client", mode] + TCP,
                            tls_app_env(impl, tmp_path)) as sup:
        family, address = sup.address()
        with_cert = tlscerts.client_context(ca.cert, certs["client"])
        assert tls_exchange(family, address, with_cert)[0]["peer_cn"] == "client"
        # A certificate from a CA the server does not trust: never served.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_exchange(family, address, tlscerts.client_context(ca.cert, certs["stranger"]))
        without = tlscerts.client_context(ca.cert)
        if mode == "optional":
            assert tls_exchange(family, address, without)[0]["peer_cn"] is None
        else:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                tls_exchange(family, address, without)
        assert tls_exchange(family, address, with_cert)[0]["peer_cn"] == "client"
        stop(sup)


# --- errors: one line, no traceback ------------------------------------------


FILE_ERRORS = {
    # case: (options, expected message); {name} is a path from certs
    "certfile-missing": (["--certfile", "{dir}/absent.pem", "--keyfile", "{server.key}"],
                         "--certfile {dir}/absent.pem: cannot read it: No such file or directory"),
    "certfile-directory": (["--certfile", "{dir}", "--keyfile", "{server.key}"],
                           "--certfile {dir}: cannot read it: Is a directory"),
    "keyfile-missing": (["--certfile", "{server.cert}", "--keyfile", "{dir}/absent.key"],
                        "--keyfile {dir}/absent.key: cannot read it: No such file or directory"),
    "certfile-garbage": (["--certfile", "{garbage}", "--keyfile", "{server.key}"],
                         "--certfile {garbage}: no PEM certificate in it"),
    "certfile-empty": (["--certfile", "{empty}", "--keyfile", "{server.key}"],
                       "--certfile {empty}: no PEM certificate in it"),
    "certfile-half-written": (["--certfile", "{half-cert}", "--keyfile", "{server.key}"],
                              "--certfile {half-cert}: a certificate in it is damaged or cut short"),
    "keyfile-garbage": (["--certfile", "{server.cert}", "--keyfile", "{garbage}"],
                        "--keyfile {garbage}: no PEM private key in it"),
    "keyfile-half-written": (["--certfile", "{server.cert}", "--keyfile", "{half-key}"],
                             "--keyfile {half-key}: the private key in it is damaged or cut short"),
    "key-of-another-cert": (["--certfile", "{server.cert}", "--keyfile", "{other.key}"],
                            "--keyfile {other.key}: the private key does not match the "
                            "certificate in {server.cert}"),
    "key-encrypted": (["--certfile", "{server.cert}", "--keyfile", "{encrypted}"],
                      "--keyfile {encrypted}: the private key is encrypted (passphrase-protected) "
                      "and a server cannot ask for the passphrase"),
    "no-key-at-all": (["--certfile", "{server.cert}"],
                      "--certfile {server.cert}: no private key in it, and no keyfile was given"),
    "cafile-garbage": (["--certfile", "{server.cert}", "--keyfile", "{server.key}",
                        "--cafile", "{garbage}", "--verify-client", "required"],
                       "--cafile {garbage}: no PEM certificate in it"),
    "cafile-missing": (["--certfile", "{server.cert}", "--keyfile", "{server.key}",
                        "--cafile", "{dir}/absent-ca.pem", "--verify-client", "optional"],
                       "--cafile {dir}/absent-ca.pem: cannot read it: No such file or directory"),
}


def fill(text: str, certs: Dict[str, Any]) -> str:
    names = {"dir": certs["dir"]}
    for key, value in certs.items():
        if isinstance(value, tlscerts.CertFiles):
            names[key + ".cert"], names[key + ".key"] = value.cert, value.key
        elif isinstance(value, str):
            names[key] = value
    for key, value in names.items():
        text = text.replace("{%s}" % key, value)
    return text


@pytest.mark.parametrize("case", sorted(FILE_ERRORS))
def test_unusable_file(impl: Impl, certs: Dict[str, Any], case: str) -> None:
    options, expected = FILE_ERRORS[case]
    result = fastserver_run(impl, ["prefork_app:Echo"] + TCP + [fill(o, certs) for o in options])
    assert error_line(result, 1).startswith(fill(expected, certs))
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_unreadable_keyfile(impl: Impl, tmp_path: Path, certs: Dict[str, Any]) -> None:
    key = tmp_path / "private.key"
    shutil.copyfile(certs["server"].key, key)
    os.chmod(key, 0)
    result = fastserver_run(impl, ["prefork_app:Echo", "--certfile", certs["server"].cert,
                                   "--keyfile", str(key)] + TCP,
                            prefix=without_file_permission_override())
    assert error_line(result, 1) == "--keyfile %s: cannot read it: Permission denied" % key


USAGE_ERRORS = {
    "keyfile-alone": (["--keyfile", "{server.key}"], "--keyfile needs --certfile"),
    "cafile-alone": (["--cafile", "{ca.cert}"], "--cafile needs --certfile"),
    "verify-alone": (["--verify-client", "required"], "--verify-client needs --certfile"),
    "timeout-alone": (["--tls-handshake-timeout", "5"], "--tls-handshake-timeout needs --certfile"),
    "required-without-ca": (["--certfile", "{server.cert}", "--keyfile", "{server.key}",
                             "--verify-client", "required"],
                            "--verify-client required needs --cafile"),
    "optional-without-ca": (["--certfile", "{server.cert}", "--keyfile", "{server.key}",
                             "--verify-client", "optional"],
                            "--verify-client optional needs --cafile"),
    "ca-without-verify": (["--certfile", "{server.cert}", "--keyfile", "{server.key}",
                           "--cafile", "{ca.cert}"],
                          "--cafile is only used to check client certificates: add "
                          "--verify-client optional or required"),
    "udp": (["--udp", "--certfile", "{server.cert}", "--keyfile", "{server.key}"],
            "--certfile needs a stream server, not ThreadingUDPServer (Python's ssl module "
            "has no DTLS)"),
    "udp-class": (["--server", "UDPServer", "--certfile", "{server.cert}", "--keyfile",
                   "{server.key}"], "--certfile needs a stream server, not UDPServer"),
    "timeout-zero": (["--certfile", "{server.cert}", "--keyfile", "{server.key}",
                      "--tls-handshake-timeout", "0"],
                     "argument --tls-handshake-timeout: must be positive, got '0'"),
    "timeout-word": (["--certfile", "{server.cert}", "--keyfile", "{server.key}",
                      "--tls-handshake-timeout", "soon"],
                     "argument --tls-handshake-timeout: not a number: 'soon'"),
    "verify-word": (["--certfile", "{server.cert}", "--verify-client", "always"],
                    "argument --verify-client: invalid choice: 'always'"),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_options_that_make_no_sense(impl: Impl, certs: Dict[str, Any], case: str) -> None:
    options, expected = USAGE_ERRORS[case]
    handler = "prefork_app:UDPEcho" if case.startswith("udp") else "prefork_app:Echo"
    result = fastserver_run(impl, [handler] + TCP + [fill(o, certs) for o in options])
    assert error_line(result, 2).startswith(expected)


# --- SIGHUP: a renewed certificate, without a failed request ----------------


class TLSLoad:
    """Client threads that loop: a new TLS connection (verifying the
    server), one line, the whole answer, close. Counts the requests served
    under each certificate serial; records every failure."""

    def __init__(self, family: int, address: Any, context: ssl.SSLContext,
                 clients: int = 4) -> None:
        self.family, self.address, self.context = family, address, context
        self.serials: Dict[int, int] = {}
        self.failures: List[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            line = b"client %d request %d\n" % (index, n)
            try:
                info, session = tls_exchange(self.family, self.address, self.context, line)
                if info["line"] != line.decode():
                    raise AssertionError("answer %r for %r" % (info, line))
            except Exception as exc:
                with self._cond:
                    self.failures.append("%s: %r" % (line.strip().decode(), exc))
                continue
            with self._cond:
                self.serials[session.serial] = self.serials.get(session.serial, 0) + 1
                self._cond.notify_all()

    def served(self, serial: int) -> int:
        with self._cond:
            return self.serials.get(serial, 0)

    def wait_served(self, serial: int, count: int, timeout: float = 15.0) -> None:
        """Wait until count requests in all were served under serial."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.serials.get(serial, 0) >= count, timeout):
                raise AssertionError("%d requests under serial %x, not %d; failures %s"
                                     % (self.serials.get(serial, 0), serial, count,
                                        self.failures[:5]))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def install(cert: tlscerts.CertFiles, live: Path, only: str = "both") -> None:
    """Put cert in place as live/cert.pem and live/key.pem the way renewal
    tools do: write a new file beside the old, then rename it over."""
    for source, name in ((cert.key, "key.pem"), (cert.cert, "cert.pem")):
        if only not in ("both", name):
            continue
        shutil.copyfile(source, live / (name + ".new"))
        os.replace(live / (name + ".new"), live / name)


def only_serial(family: int, address: Any, context: ssl.SSLContext,
                count: int = 10) -> Set[int]:
    """The serials that count fresh connections, one after the other, see."""
    return {tls_exchange(family, address, context)[1].serial for _ in range(count)}


def reload_setup(tmp_path: Path) -> Tuple[tlscerts.CertFiles, tlscerts.CertFiles,
                                          tlscerts.CertFiles, Path]:
    ca = tlscerts.make_ca(tmp_path)
    first = tlscerts.make_cert(tmp_path, ca, "first")
    renewed = tlscerts.make_cert(tmp_path, ca, "renewed")
    live = tmp_path / "live"
    live.mkdir()
    install(first, live)
    return ca, first, renewed, live


def served_under_reload(impl: Impl, tmp_path: Path, live: Path) -> Supervised:
    return Supervised.command(
        ["tls_app:TLSInfo", "--workers", "2", "--graceful-timeout", "10",
         "--certfile", str(live / "cert.pem"), "--keyfile", str(live / "key.pem")] + TCP,
        tls_app_env(impl, tmp_path))


def test_sighup_serves_the_renewed_certificate(impl: Impl, tmp_path: Path) -> None:
    ca, first, renewed, live = reload_setup(tmp_path)
    context = tlscerts.client_context(ca.cert)
    with served_under_reload(impl, tmp_path, live) as sup:
        family, address = sup.address()
        load = TLSLoad(family, address, context)
        try:
            load.wait_served(first.serial, 20)
            install(renewed, live)
            sup.send_signal(signal.SIGHUP)
            sup.wait_for(r"INFO fastserver\.tls: SIGHUP: reloaded %s and %s"
                         % (live / "cert.pem", live / "key.pem"))
            # Once both old workers are gone, only the new certificate is served.
            sup.wait_for(r"replaced, exited with status 0", count=2)
            load.wait_served(renewed.serial, load.served(renewed.serial) + 20)
            assert only_serial(family, address, context) == {renewed.serial}
        finally:
            load.stop()
        assert not load.failures, load.failures[:5]
        assert set(load.serials) == {first.serial, renewed.serial}
        stop(sup)


@pytest.mark.parametrize("damage", ["half-written-cert", "cert-before-its-key", "garbage-key"])
def test_failed_reload_keeps_the_old_certificate(impl: Impl, tmp_path: Path, damage: str) -> None:
    """A reload that finds unusable files logs one error line naming the
    file and keeps serving the certificate it had; the next good reload
    takes the renewal."""
    ca, first, renewed, live = reload_setup(tmp_path)
    context = tlscerts.client_context(ca.cert)
    cert_path, key_path = live / "cert.pem", live / "key.pem"
    if damage == "half-written-cert":
        broken = tmp_path / "half.pem"
        broken.write_text(open(renewed.cert).read()[:250])
        expected = "--certfile %s: a certificate in it is damaged or cut short" % cert_path
    elif damage == "cert-before-its-key":
        expected = ("--keyfile %s: the private key does not match the certificate in %s"
                    % (key_path, cert_path))
    else:
        broken = tmp_path / "garbage.key"
        broken.write_text("not a key\n")
        expected = "--keyfile %s: no PEM private key in it" % key_path
    with served_under_reload(impl, tmp_path, live) as sup:
        family, address = sup.address()
        load = TLSLoad(family, address, context)
        try:
            load.wait_served(first.serial, 20)
            if damage == "cert-before-its-key":
                install(renewed, live, only="cert.pem")  # the renewal, caught halfway
            else:
                os.replace(broken, cert_path if damage == "half-written-cert" else key_path)
            sup.send_signal(signal.SIGHUP)
            error = sup.wait_for(r"ERROR fastserver\.tls: SIGHUP: (.*)").group(1)
            assert error.startswith(expected), error
            assert error.endswith("; still serving the certificate loaded before"), error
            sup.wait_for(r"replaced, exited with status 0", count=2)
            load.wait_served(first.serial, load.served(first.serial) + 20)
            assert only_serial(family, address, context) == {first.serial}
            # The files complete now: the next SIGHUP takes them.
            install(renewed, live)
            sup.send_signal(signal.SIGHUP)
            sup.wait_for(r"SIGHUP: reloaded")
            sup.wait_for(r"replaced, exited with status 0", count=4)
            load.wait_served(renewed.serial, load.served(renewed.serial) + 20)
            assert only_serial(family, address, context) == {renewed.serial}
        finally:
            load.stop()
        assert not load.failures, load.failures[:5]
        stop(sup)
    assert "Traceback" not in sup.log
    assert len([line for line in sup.lines if " ERROR " in line]) == 1, sup.log
