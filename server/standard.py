"""The standard gRPC services next to SinFusion: health checking (with List) and reflection v1 and v1alpha.

Health service names: "" (the server), "sinfusion.v1.SinFusion", and one per bundle found under
--models, "sinfusion.v1.SinFusion/<model>": SERVING when it is served, NOT_SERVING when its bundle was
refused at startup (the log and DescribeModel say why). Draining turns every name NOT_SERVING.

grpcio-health-checking's asyncio servicer lacks List (it answers UNIMPLEMENTED) and grpcio-reflection
ships only v1alpha; v1 is the same protocol under another package name, so it is served by the same
servicer, with the v1 descriptors derived from the v1alpha ones (grpcurl and Postman ask for v1 first).
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_V1ALPHA = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
MAX_LISTED = 1000  # health List answers RESOURCE_EXHAUSTED beyond this many names (as the spec asks)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def model_health_name(service: str, model: str) -> str:
    return f"{service}/{model}"


class HealthServicer(health.aio.HealthServicer):
    """grpc_health's asyncio servicer plus List."""

    async def List(self, request, context):  # noqa: N802 (gRPC's naming)
        statuses = dict(self._server_status)  # a snapshot, as the spec allows
        if len(statuses) > MAX_LISTED:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{len(statuses)} health names; List answers at most {MAX_LISTED}")
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses.items()})


def add_health(server: grpc.aio.Server) -> HealthServicer:
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


def _v1_reflection_file() -> None:
    """Add grpc/reflection/v1/reflection.proto to the default pool, derived from v1alpha."""
    pool = descriptor_pool.Default()
    name = "grpc/reflection/v1/reflection.proto"
    try:
        pool.FindFileByName(name)
        return  # another library (or an earlier server in this process) added it
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = proto.package, "grpc.reflection.v1"
    proto.name, proto.package = name, new
    proto.options.Clear()  # java/go package options name v1alpha

    def renamed(type_name: str) -> str:
        return type_name.replace(f".{old}.", f".{new}.", 1)

    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = renamed(method.input_type), renamed(method.output_type)
    pool.AddSerializedFile(proto.SerializeToString())


def add_reflection(server: grpc.aio.Server, services: tuple[str, ...]) -> None:
    """Reflection v1 and v1alpha over `services` (the reflection services themselves are added)."""
    _v1_reflection_file()
    servicer = ReflectionServicer((*services, REFLECTION_V1, REFLECTION_V1ALPHA))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),))
