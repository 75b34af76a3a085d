"""A request's lifecycle preference: how long the media it produces lives.

Every RPC that produces files (Encode, Upload, multipart, and the inference
RPCs whose handlers produce them) reads it the same way: the request's
`Lifecycle` field, else the `x-ferry-object-lifecycle-preference` metadata
header (`{"expiration_duration_seconds": N}`), else no expiry.
"""

from __future__ import annotations

import json

import grpc

from ferry.services.errors import InvalidArgument
from ferry.v1 import common_pb2

LIFECYCLE_HEADER = "x-ferry-object-lifecycle-preference"


def expires_in(lifecycle: common_pb2.Lifecycle, context: grpc.aio.ServicerContext) -> int | None:
    """The request's field, else the lifecycle metadata header, else no expiry."""
    if lifecycle.HasField("expiration_seconds"):
        return lifecycle.expiration_seconds
    for key, value in context.invocation_metadata() or ():
        if key == LIFECYCLE_HEADER:
            try:
                seconds = json.loads(value)["expiration_duration_seconds"]
            except (ValueError, KeyError, TypeError):
                raise InvalidArgument(
                    f'{LIFECYCLE_HEADER} must be JSON like {{"expiration_duration_seconds": 3600}}', reason="BAD_LIFECYCLE"
                ) from None
            if not isinstance(seconds, int) or seconds <= 0:
                raise InvalidArgument("expiration_duration_seconds must be a positive integer", reason="BAD_LIFECYCLE")
            return seconds
    return None
