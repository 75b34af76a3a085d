#!/usr/bin/env python3
"""`make demo`: start the embedded stack, exercise it end to end, stop it.

Each landed issue extends this walk-through with its real work.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from ferry.client import SERVICE_NAMES
from ferry.testing import StackProcess

DATA_DIR = Path(__file__).resolve().parent.parent / ".demo-data"


def main() -> int:
    stack = StackProcess(["--data-dir", str(DATA_DIR)]).start()
    print(stack.ready_line, flush=True)
    try:
        with stack.client() as client:
            print(f"health: server {client.health()}")
            for name in SERVICE_NAMES:
                print(f"health: {name} {client.health(name)}")
            with grpc.insecure_channel(stack.grpc_address) as channel:
                services = ProtoReflectionDescriptorDatabase(channel).get_services()
            print("reflection lists:", ", ".join(sorted(services)))
    finally:
        stack.signal(2)  # SIGINT, as Ctrl-C would
        code = stack.wait()
        stack.stop()
    print(f"stack stopped (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
