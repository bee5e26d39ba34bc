"""Generated protobuf and gRPC stubs for the perdure.v1 contract (see proto/)."""
