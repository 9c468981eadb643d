"""The gRPC API over mutual TLS: the only package that imports grpc or generated code."""
