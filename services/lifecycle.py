"""A request's lifecycle preference: how long the media it produces lives.

Every RPC that produces files (Encode, Upload, multipart, and the inference
RPCs whose handlers produce them) reads it the same way: the request's
`Lifecycle` field, else the `x-ferry-object-lifecycle-preference` metadata
header (`{"expiration_duration_seconds": N}`), else no expiry. Either way it is
checked here, at the door: 1 second to `MAX_EXPIRES_IN_SECONDS` (100 years),
else INVALID_ARGUMENT (`INVALID_EXPIRY`); a header that is not that JSON with a
whole number is INVALID_ARGUMENT (`BAD_LIFECYCLE`).
"""

from __future__ import annotations

import json

from ferry.errors import InvalidArgument
from ferry.services.rpc_context import RpcContext
from ferry.services.storage.base import check_expires_in
from ferry.v1 import common_pb2

LIFECYCLE_HEADER = "x-ferry-object-lifecycle-preference"
# `{"expiration_duration_seconds": 3153600000}` is 43 characters; anything much longer is not this JSON.
MAX_HEADER_CHARS = 256


def expires_in(lifecycle: common_pb2.Lifecycle, context: RpcContext) -> int | None:
    """The request's field, else the lifecycle metadata header, else no expiry."""
    if lifecycle.HasField("expiration_seconds"):
        return check_expires_in(lifecycle.expiration_seconds)
    for key, value in context.invocation_metadata() or ():
        if key == LIFECYCLE_HEADER:
            return preference_seconds(value)
    return None


def preference_seconds(value: str | bytes, header: str = LIFECYCLE_HEADER) -> int:
    """The lifetime a lifecycle preference header (`header`, as the caller named it) asks for, checked."""
    malformed = InvalidArgument(
        f'{header} must be JSON like {{"expiration_duration_seconds": 3600}}', reason="BAD_LIFECYCLE"
    )
    # Bounded before parsing: 8 KiB of "[" (what gRPC lets a header hold) is a RecursionError in json.
    if len(value) > MAX_HEADER_CHARS:
        raise malformed
    try:
        seconds = json.loads(value)["expiration_duration_seconds"]
    except (ValueError, KeyError, TypeError):  # not JSON, not an object, no such key
        raise malformed from None
    # `type(...) is int`: true and false are ints to Python, and 1e400 parses as the float inf.
    if type(seconds) is not int:
        raise InvalidArgument(
            "expiration_duration_seconds must be a whole number of seconds, not a string, float or bool",
            reason="BAD_LIFECYCLE",
        )
    return check_expires_in(seconds)
