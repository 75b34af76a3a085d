"""Byte sizes the SDK and the services both spell: the unit, and the contract's largest data message."""

from __future__ import annotations

__all__ = ["MESSAGE_BYTES", "MIB"]

MIB = 1 << 20

# Bytes that stream (a tensor and its audio track, an upload, `Read`'s file) go in chunks of at most
# this much (protos/ferry/v1: encoder.proto, downloader.proto), so no message nears gRPC's 4 MiB default limit.
MESSAGE_BYTES = MIB
