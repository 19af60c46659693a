"""voxgrid services: one package per gRPC service."""
