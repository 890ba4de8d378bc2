"""Echo handlers shared by every Python implementation.

This module imports ``socketserver`` by that name on purpose: the server
runner installs fastserver as ``sys.modules["socketserver"]`` first, so the
identical source runs on cython, pure and stdlib.
"""
import socketserver

BULK_READ_SIZE = 65536


class LineEcho(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class NoDelayLineEcho(LineEcho):
    disable_nagle_algorithm = True


class CoalescingLineEcho(NoDelayLineEcho):
    # fastserver batches writes made while more input is buffered; the stdlib
    # ignores the attribute, which keeps the handler runnable on both.
    coalesce_writes = True


class DatagramEcho(socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


class BulkEcho(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while True:
            chunk = self.rfile.read1(BULK_READ_SIZE)
            if not chunk:
                return
            self.wfile.write(chunk)
