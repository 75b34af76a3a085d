"""Ferry: move media in and out of GPU inference.

The SDK: typed clients for the ferry stack (`Client`, `AsyncClient`) and the
generated contract (`ferry.v1`). It stays light — grpcio, protobuf and numpy —
and never imports the services or torch.
"""

from ferry.client import AsyncClient, Client
from ferry.connection import Connection

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client", "Connection", "__version__"]
