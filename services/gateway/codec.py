"""A Connect message codec: binary protobuf or protobuf's canonical JSON, named by the Content-Type's tail
(`application/proto`, `application/connect+json`, …)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from ferry.services.gateway.connect_errors import ConnectError


@dataclass(frozen=True)
class Codec:
    name: str  # "proto" or "json"

    def decode(self, data: bytes, message_type: type[Message]) -> Message:
        """The request message; a body that is not one is INVALID_ARGUMENT, never a server error."""
        message = message_type()
        try:
            if self.name == "proto":
                message.ParseFromString(data)
            elif data.strip():  # an empty JSON body is the empty message, as an empty proto body is
                json_format.Parse(data.decode("utf-8"), message)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError, RecursionError) as error:
            what = "protobuf" if self.name == "proto" else "JSON"
            raise ConnectError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the body is not a {message_type.DESCRIPTOR.full_name} in {what}: {str(error)[:200]}",
            ) from None
        return message

    def encode(self, message: Message) -> bytes:
        if self.name == "proto":
            return message.SerializeToString()
        return json.dumps(json_format.MessageToDict(message), separators=(",", ":")).encode()


PROTO = Codec("proto")
JSON = Codec("json")
CODECS = {codec.name: codec for codec in (PROTO, JSON)}
