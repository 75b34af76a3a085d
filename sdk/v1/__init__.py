"""Generated gRPC stubs for the ferry.v1 contract (scripts/gen-protos)."""
