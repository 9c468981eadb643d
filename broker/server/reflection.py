"""gRPC server reflection, v1 as well as v1alpha.

grpcio-reflection (1.85) implements only ``grpc.reflection.v1alpha.ServerReflection``; current
tools (grpcurl, Postman, grpc-java's and grpc-go's clients) ask for ``grpc.reflection.v1`` first
and v1alpha is deprecated there. The v1 protocol is v1alpha under another package name, message
for message and field number for field number, so one servicer answers both: v1alpha through
grpcio-reflection's registration, v1 through a generic handler on the same servicer with the
same (wire-identical) message classes. The v1 file descriptor, derived from v1alpha's, is added
to the pool so that reflection can also describe the v1 service itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection as v1alpha
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc

V1ALPHA_SERVICE_NAME: str = v1alpha.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
_METHOD = "ServerReflectionInfo"


def v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, as v1alpha's file renamed to the v1 package."""
    alpha = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(alpha)
    old_prefix, new_prefix = f".{alpha.package}.", f".{V1_PACKAGE}."
    v1 = descriptor_pb2.FileDescriptorProto()
    v1.CopyFrom(alpha)
    v1.name = V1_FILE
    v1.package = V1_PACKAGE
    v1.ClearField("options")
    for message in v1.message_type:
        for field in message.field:
            if field.type_name.startswith(old_prefix):
                field.type_name = new_prefix + field.type_name.removeprefix(old_prefix)
    for service in v1.service:
        for method in service.method:
            method.input_type = new_prefix + method.input_type.removeprefix(old_prefix)
            method.output_type = new_prefix + method.output_type.removeprefix(old_prefix)
    return v1


def _add_v1_descriptor(pool: Any) -> None:
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.Add(v1_file_descriptor())


def enable_reflection(service_names: Iterable[str], server: Any) -> None:
    """Serve reflection v1 and v1alpha on an aio ``server`` for ``service_names`` (plus both
    reflection services), over the default descriptor pool."""
    pool = descriptor_pool.Default()
    _add_v1_descriptor(pool)
    names = (*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    servicer = v1alpha.aio.ReflectionServicer(names, pool=pool)
    v1alpha_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_handler = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            _METHOD: grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
                response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1_handler,))
