"""Generated gRPC stubs for voxgrid.v1 (python -m voxgrid.protogen)."""
