"""The standard library's own servers run on fastserver.

http.server, xmlrpc.server, wsgiref.simple_server and logging.config all
``import socketserver``. Each test starts a fresh interpreter for one backend,
puts fastserver in ``sys.modules['socketserver']`` before anything imports
those modules, checks that their server classes really derive from
fastserver's, and then drives the server with the stdlib's own client over
loopback.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from typing import Any

from conftest import Impl, backend_env
from tlscerts import make_ca, make_cert

# Runs first in every subprocess: pins the backend and installs fastserver
# as socketserver before any stdlib server module is imported.
PRELUDE = '''
import os, sys, threading
assert "socketserver" not in sys.modules, "socketserver was imported too early"
import fastserver
assert fastserver.backend == os.environ["FS_EXPECT_BACKEND"], fastserver.backend
sys.modules["socketserver"] = fastserver

def start(server):
    thread = threading.Thread(target=server.serve_forever,
                              kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread

def stop(server, thread):
    server.shutdown()
    thread.join(10)
    assert not thread.is_alive(), "serve_forever did not return"
    server.server_close()
'''


def run_script(impl: Impl, body: str, timeout: float = 60) -> str:
    """Run PRELUDE + body in a new interpreter with impl's backend; the body
    must print ALL-PASSED as its last line."""
    env = backend_env(impl.name)
    env["FS_EXPECT_BACKEND"] = impl.name
    code = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=timeout)
    output = "--- stdout\n%s\n--- stderr\n%s" % (proc.stdout, proc.stderr)
    assert proc.returncode == 0, output
    assert proc.stdout.strip().splitlines()[-1:] == ["ALL-PASSED"], output
    return proc.stdout


def test_http_server_serves_a_file(impl: Impl) -> None:
    run_script(impl, '''
        import functools, http.server, shutil, tempfile, urllib.error, urllib.request

        assert http.server.socketserver is fastserver
        assert fastserver.TCPServer in http.server.HTTPServer.__mro__
        assert fastserver.ThreadingMixIn in http.server.ThreadingHTTPServer.__mro__
        assert fastserver.StreamRequestHandler in \\
            http.server.SimpleHTTPRequestHandler.__mro__

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        root = tempfile.mkdtemp()
        payload = os.urandom(300_000) + b"end"
        with open(os.path.join(root, "data.bin"), "wb") as f:
            f.write(payload)
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Quiet, directory=root))
        assert isinstance(server, fastserver.ThreadingMixIn)
        assert isinstance(server, fastserver.TCPServer)
        thread = start(server)
        try:
            base = "http://127.0.0.1:%d/" % server.server_address[1]
            with urllib.request.urlopen(base + "data.bin", timeout=10) as resp:
                assert resp.status == 200
                assert int(resp.headers["Content-Length"]) == len(payload)
                body = resp.read()
            assert body == payload, (len(body), len(payload))

            # several clients at once, each gets the whole file
            results = []
            def fetch():
                with urllib.request.urlopen(base + "data.bin", timeout=10) as r:
                    results.append(r.read())
            clients = [threading.Thread(target=fetch) for _ in range(4)]
            for c in clients:
                c.start()
            for c in clients:
                c.join(20)
            assert results == [payload] * 4, [len(r) for r in results]

            try:
                urllib.request.urlopen(base + "missing.bin", timeout=10)
            except urllib.error.HTTPError as exc:
                assert exc.code == 404, exc.code
            else:
                raise AssertionError("no 404 for a missing file")
        finally:
            stop(server, thread)
            shutil.rmtree(root)
        print("ALL-PASSED")
    ''')


def test_https_idiom_serves_beside_silent_clients(impl: Impl, tmp_path: Any) -> None:
    """http.server's HTTPS idiom on fastserver: ThreadingHTTPServer with its
    listening socket wrapped, fetched by urllib with a verifying context,
    while 40 clients sit connected and silent (on the stdlib the first of
    them stops the server; tests/test_discrepancies.py)."""
    ca = make_ca(tmp_path)
    cert = make_cert(tmp_path, ca, "server")
    run_script(impl, '''
        import http.server, socket, ssl, urllib.request

        class Hello(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = (type(self.request).__name__ + " "
                        + self.request.version()).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        # A backlog for the silent crowd (5 drops SYNs: 1 s retransmits).
        http.server.ThreadingHTTPServer.request_queue_size = 64
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(%r, %r)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = start(server)
        silent = [socket.create_connection(server.server_address)
                  for _ in range(40)]
        try:
            client = ssl.create_default_context(cafile=%r)
            url = "https://localhost:%%d/" %% server.server_address[1]
            for _ in range(3):
                with urllib.request.urlopen(url, context=client, timeout=5) as reply:
                    assert reply.read() == b"SSLSocket TLSv1.3", "bad reply"
        finally:
            for sock in silent:
                sock.close()
            stop(server, thread)
        print("ALL-PASSED")
    ''' % (cert.cert, cert.key, ca.cert))


def test_xmlrpc_server_answers_calls(impl: Impl) -> None:
    run_script(impl, '''
        import xmlrpc.client, xmlrpc.server

        assert xmlrpc.server.socketserver is fastserver
        assert fastserver.TCPServer in xmlrpc.server.SimpleXMLRPCServer.__mro__

        server = xmlrpc.server.SimpleXMLRPCServer(
            ("127.0.0.1", 0), logRequests=False, allow_none=True)
        server.register_function(pow)
        server.register_function(lambda a, b: a + b, "add")
        server.register_introspection_functions()
        server.register_multicall_functions()
        thread = start(server)
        try:
            url = "http://127.0.0.1:%d/" % server.server_address[1]
            with xmlrpc.client.ServerProxy(url) as proxy:
                assert proxy.pow(2, 10) == 1024
                assert proxy.add("fast", "server") == "fastserver"
                assert proxy.add([1], [2, 3]) == [1, 2, 3]
                assert {"pow", "add"} <= set(proxy.system.listMethods())
                try:
                    proxy.no_such_method()
                except xmlrpc.client.Fault as fault:
                    assert "no_such_method" in fault.faultString, fault
                else:
                    raise AssertionError("no Fault for an unknown method")
            # a multicall over a fresh connection
            with xmlrpc.client.ServerProxy(url) as proxy:
                multi = xmlrpc.client.MultiCall(proxy)
                for i in range(5):
                    multi.pow(i, 2)
                assert list(multi()) == [0, 1, 4, 9, 16]
        finally:
            stop(server, thread)
        print("ALL-PASSED")
    ''')


def test_wsgiref_simple_server_serves_an_app(impl: Impl) -> None:
    run_script(impl, '''
        import urllib.request
        import wsgiref.simple_server as simple

        assert fastserver.TCPServer in simple.WSGIServer.__mro__
        assert fastserver.StreamRequestHandler in simple.WSGIRequestHandler.__mro__

        def app(environ, start_response):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            posted = environ["wsgi.input"].read(length) if length else b""
            body = b"|".join([environ["REQUEST_METHOD"].encode(),
                              environ["PATH_INFO"].encode(),
                              environ["QUERY_STRING"].encode(), posted])
            start_response("200 OK", [("Content-Type", "text/plain"),
                                      ("Content-Length", str(len(body)))])
            return [body]

        class Quiet(simple.WSGIRequestHandler):
            def log_message(self, *args):
                pass

        server = simple.make_server("127.0.0.1", 0, app, handler_class=Quiet)
        assert isinstance(server, fastserver.TCPServer)
        thread = start(server)
        try:
            base = "http://127.0.0.1:%d" % server.server_address[1]
            with urllib.request.urlopen(base + "/some/path?x=1&y=2", timeout=10) as r:
                assert r.status == 200
                assert r.read() == b"GET|/some/path|x=1&y=2|"
            data = os.urandom(50_000)
            with urllib.request.urlopen(base + "/post", data=data, timeout=10) as r:
                assert r.read() == b"POST|/post||" + data
        finally:
            stop(server, thread)
        print("ALL-PASSED")
    ''')


def test_logging_config_listen_applies_a_config(impl: Impl) -> None:
    run_script(impl, '''
        import json, logging, logging.config, socket, struct, time

        assert logging.config.ThreadingTCPServer is fastserver.ThreadingTCPServer
        assert logging.config.StreamRequestHandler is fastserver.StreamRequestHandler

        def send(port, text):
            data = text.encode("utf-8")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(struct.pack(">L", len(data)) + data)

        for name in ("fs.one", "fs.two"):
            assert logging.getLogger(name).level == logging.NOTSET

        listener = logging.config.listen(0)
        listener.start()
        assert listener.ready.wait(10), "listener did not start"
        deadline = time.monotonic() + 10
        while logging.config._listener is None and time.monotonic() < deadline:
            time.sleep(0.01)
        receiver = logging.config._listener
        assert isinstance(receiver, fastserver.ThreadingTCPServer), type(receiver)
        port = listener.port
        assert port and port == receiver.server_address[1]
        try:
            # a dictConfig in JSON
            listener.ready.clear()
            send(port, json.dumps({
                "version": 1, "disable_existing_loggers": False,
                "loggers": {"fs.one": {"level": "DEBUG"}}}))
            assert listener.ready.wait(10), "config 1 not applied"
            assert logging.getLogger("fs.one").level == logging.DEBUG

            # a fileConfig over a second connection
            listener.ready.clear()
            send(port, "\\n".join([
                "[loggers]", "keys=root,two", "",
                "[handlers]", "keys=", "", "[formatters]", "keys=", "",
                "[logger_root]", "level=WARNING", "handlers=", "",
                "[logger_two]", "level=ERROR", "handlers=", "qualname=fs.two",
                "propagate=0", ""]))
            assert listener.ready.wait(10), "config 2 not applied"
            assert logging.getLogger("fs.two").level == logging.ERROR
        finally:
            logging.config.stopListening()
            listener.join(10)
        assert not listener.is_alive(), "listener did not stop"
        # serve_until_stopped() closed the server socket
        assert receiver.socket.fileno() == -1
        print("ALL-PASSED")
    ''')
