"""Ferry's gRPC services: downloader, encoder, storage and the plumbing that serves them."""
