"""The client's own protobuf descriptor pool (see ``tools/protogen.py``).

The generated ``broker.v1`` messages are registered here instead of in protobuf's default pool,
so a process may also load another copy of the same API (the broker itself, a test harness)
without a "duplicate symbol" error. The pool holds the well-known types the API uses.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool, duration_pb2, timestamp_pb2

POOL = descriptor_pool.DescriptorPool()
for _wkt in (duration_pb2, timestamp_pb2):
    POOL.AddSerializedFile(_wkt.DESCRIPTOR.serialized_pb)
