"""Every method of every service a gRPC server lists, called with a chosen credential.

The services come from the server's own reflection (so a service added to a server is walked
too) and their methods from the descriptors; requests are built from the descriptors:

    opening_request   an empty request, except that a top-level oneof gets its first member
                      (a session's Hello), so a stream reaches its credential check
    with_token        the same with every string field named like *token* set to `token`
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

ALWAYS_OPEN = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
               "grpc.reflection.v1.ServerReflection")


def listed_services(channel: grpc.Channel) -> list[str]:
    """The services the server lists through reflection, health and reflection left out."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = [s.name for reply in replies for s in reply.list_services_response.service]
    return sorted(n for n in names if n not in ALWAYS_OPEN)


def methods(service_names: list[str]) -> list[MethodDescriptor]:
    """Each method of the named services (their *_pb2 modules must be imported)."""
    pool = descriptor_pool.Default()
    return [m for name in service_names for m in pool.FindServiceByName(name).methods]


def opening_request(method: MethodDescriptor) -> Message:
    message = message_factory.GetMessageClass(method.input_type)()
    for oneof in method.input_type.oneofs:
        first = oneof.fields[0]
        if first.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, first.name).SetInParent()
    return message


def with_token(message: Message, token: str) -> Message:
    """Sets every string field named like *token* (in the message and its set sub-messages)."""
    for field in message.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_STRING and "token" in field.name and not _repeated(field):
            setattr(message, field.name, token)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not _repeated(field) and message.HasField(field.name):
            with_token(getattr(message, field.name), token)
    return message


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def call(channel: grpc.Channel, method: MethodDescriptor, request: Message,
         metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    """Calls `method` with `request` (the only message of a request stream); the status code."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    output = message_factory.GetMessageClass(method.output_type)
    serialize, parse = (lambda m: m.SerializeToString()), output.FromString
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(path, serialize, parse)(iter([request]), metadata=metadata, timeout=10):
                pass
        elif method.client_streaming:
            channel.stream_unary(path, serialize, parse)(iter([request]), metadata=metadata, timeout=10)
        elif method.server_streaming:
            for _ in channel.unary_stream(path, serialize, parse)(request, metadata=metadata, timeout=10):
                pass
        else:
            channel.unary_unary(path, serialize, parse)(request, metadata=metadata, timeout=10)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK
