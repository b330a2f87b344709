"""Generated protobuf modules of the gRPC API; `eventmesh.proto` is the source (`make protos`)."""
