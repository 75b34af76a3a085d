"""The `ferry` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc

from ferry.client import SERVICE_NAMES, Client


def _health(args: argparse.Namespace) -> int:
    with Client(args.address) as client:
        try:
            for service in ("", *SERVICE_NAMES):
                print(f"{service or 'server'}: {client.health(service)}")
        except grpc.RpcError as error:
            print(f"ferry health: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry", description="Move media in and out of GPU inference.")
    commands = parser.add_subparsers(dest="command", required=True)

    # Listed for --help; `main` hands `serve` to the services package, which
    # the SDK imports only when asked to serve.
    commands.add_parser("serve", help="run the stack (all services, or the ones named); see `ferry serve --help`")

    health = commands.add_parser("health", help="print the serving status of the stack and each service")
    health.add_argument("--address", help="host:port [env FERRY_ADDRESS]")
    health.set_defaults(handler=_health)
    return parser


def _serve(argv: list[str]) -> int:
    try:
        from ferry.services.launch import main as serve_main
    except ImportError as error:
        print(f"ferry serve needs the services extra (pip install 'ferry-media[services]'): {error}", file=sys.stderr)
        return 2
    return serve_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    args = _parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
