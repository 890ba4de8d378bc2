"""fastserver: a drop-in, C-accelerated replacement for socketserver.

``import fastserver as socketserver`` keeps every server, handler and subclass
working. ``fastserver.backend`` names the active core: ``"cython"`` or
``"python"`` (set ``FASTSERVER_NO_EXTENSIONS=1`` to force the latter).
"""

from ._compat import backend as backend
from .handlers import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler
from .pool import (
    ThreadPoolMixIn,
    ThreadPoolTCPServer,
    ThreadPoolUDPServer,
    ThreadPoolUnixStreamServer,
)
from .proxy import ProxyProtocolMixIn
from .servers import (
    BaseServer,
    ForkingMixIn,
    ForkingTCPServer,
    ForkingUDPServer,
    ForkingUnixDatagramServer,
    ForkingUnixStreamServer,
    TCPServer,
    ThreadingMixIn,
    ThreadingTCPServer,
    ThreadingUDPServer,
    ThreadingUnixDatagramServer,
    ThreadingUnixStreamServer,
    UDPServer,
    UnixDatagramServer,
    UnixStreamServer,
)

__version__ = "0.1.0"

# socketserver's __all__ (CPython 3.13), then fastserver's additions.
__all__ = [
    "BaseServer", "TCPServer", "UDPServer",
    "ThreadingUDPServer", "ThreadingTCPServer",
    "BaseRequestHandler", "StreamRequestHandler",
    "DatagramRequestHandler", "ThreadingMixIn",
    "ForkingUDPServer", "ForkingTCPServer", "ForkingMixIn",
    "UnixStreamServer", "UnixDatagramServer",
    "ThreadingUnixStreamServer", "ThreadingUnixDatagramServer",
    "ForkingUnixStreamServer", "ForkingUnixDatagramServer",
    # fastserver's additions
    "ThreadPoolMixIn", "ThreadPoolTCPServer", "ThreadPoolUDPServer",
    "ThreadPoolUnixStreamServer", "ProxyProtocolMixIn",
]

# Public classes report the package as their module, as socketserver's do
# (repr, pickling, and the check that everything public is in __all__).
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
