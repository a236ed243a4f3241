"""Generated protobuf and gRPC code for the `trainwire.v1` API (run `make proto`; never edit)."""
