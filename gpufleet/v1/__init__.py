"""Generated gRPC/protobuf stubs for the gpufleet.v1 API (scripts/genproto.py)."""
