"""The HTTP API (and console) over the Coordinator gRPC API; a client like the CLI, never the database."""
