"""The servicer context every RPC handler and server interceptor takes.

grpc.aio's ServicerContext is generic in the call's request and response types, but nothing Ferry calls on
it (abort, metadata, cancelled, peer, deadlines) depends on them: one name keeps signatures to what they say.
"""

from __future__ import annotations

from typing import Any

import grpc

RpcContext = grpc.aio.ServicerContext[Any, Any]
