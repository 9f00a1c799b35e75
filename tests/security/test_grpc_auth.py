"""No anonymous access to the internal gRPC ports: every method of every service that storage
and the scheduler list (their own reflection; requests built from the descriptors) refuses a
call without a credential and a call with a wrong one, with UNAUTHENTICATED. Health and
reflection stay open; the real credentials still work (so the refusals are not a dead port).
"""

from __future__ import annotations

import grpc
import pytest
from comfyfleet.storage.v1 import storage_service_pb2, storage_service_pb2_grpc
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.devrun import Suite
from services.scheduler import server as scheduler_server
from services.storage import server as storage_server
from tests.security.grpc_walk import call, listed_services, methods, opening_request, with_token

WRONG = "wrong-credential-" + "x" * 40
SERVERS = ("storage", "scheduler")
# the servers' wiring imports every scheduler, runner and storage *_pb2 module: their descriptors
WIRING = (scheduler_server, storage_server)


def address(suite: Suite, server: str) -> str:
    return f"127.0.0.1:{suite.storage_port if server == 'storage' else suite.scheduler_port}"


def walk(suite: Suite, server: str) -> list[MethodDescriptor]:
    with grpc.insecure_channel(address(suite, server)) as channel:
        found = methods(listed_services(channel))
    return found


@pytest.mark.parametrize("server", SERVERS)
def test_every_method_refuses_an_anonymous_call(suite: Suite, server: str) -> None:
    walked = walk(suite, server)
    assert len(walked) >= (4 if server == "storage" else 20), [m.full_name for m in walked]
    with grpc.insecure_channel(address(suite, server)) as channel:
        codes = {m.full_name: call(channel, m, opening_request(m), ()) for m in walked}
    assert {name for name, code in codes.items() if code != grpc.StatusCode.UNAUTHENTICATED} == set(), codes


# the service token is storage's right credential; on the scheduler it is nobody's user token
@pytest.mark.parametrize(("server", "credential"), [("storage", "wrong-token"), ("storage", "malformed"),
                                                    ("scheduler", "wrong-token"), ("scheduler", "malformed"),
                                                    ("scheduler", "service-token")])
def test_every_method_refuses_a_wrong_credential(suite: Suite, server: str, credential: str) -> None:
    token = suite.service_token if credential == "service-token" else WRONG
    header = f"Basic {token}" if credential == "malformed" else f"Bearer {token}"
    walked = walk(suite, server)
    with grpc.insecure_channel(address(suite, server)) as channel:
        codes = {m.full_name: call(channel, m, with_token(opening_request(m), token), (("authorization", header),))
                 for m in walked}
    assert {name for name, code in codes.items() if code != grpc.StatusCode.UNAUTHENTICATED} == set(), codes


@pytest.mark.parametrize("server", SERVERS)
def test_health_and_reflection_stay_open(suite: Suite, server: str) -> None:
    with grpc.insecure_channel(address(suite, server)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert listed_services(channel)  # reflection answered without a credential


def test_storage_serves_the_service_token_and_refuses_a_user_token(suite: Suite) -> None:
    key = "outputs/none/1/a.png"
    with grpc.insecure_channel(f"127.0.0.1:{suite.storage_port}") as channel:
        stub = storage_service_pb2_grpc.StorageServiceStub(channel)
        # a user's API token opens the public API, not storage; nor does a runner token, which
        # any user can make (POST /v1/runner-token)
        for token in (suite.token, (suite.var_dir / "runner-token").read_text().strip()):
            with pytest.raises(grpc.RpcError) as refused:
                stub.PresignObject(storage_service_pb2.PresignObjectRequest(key=key),
                                   metadata=(("authorization", f"Bearer {token}"),), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            with pytest.raises(grpc.RpcError) as refused:  # (it answers with the URL signing key)
                stub.GetUrlSigning(storage_service_pb2.GetUrlSigningRequest(),
                                   metadata=(("authorization", f"Bearer {token}"),), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            item = storage_service_pb2.PutObjectsBytesRequest(id=1, put=storage_service_pb2.PutObjectBytesRequest(
                header=storage_service_pb2.PutObjectHeader(key=key), data=b"x"))
            with pytest.raises(grpc.RpcError) as refused:  # (the runner's stream of small puts)
                list(stub.PutObjectsBytes(iter([item]), metadata=(("authorization", f"Bearer {token}"),), timeout=5))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        signing = stub.GetUrlSigning(storage_service_pb2.GetUrlSigningRequest(),
                                     metadata=(("authorization", f"Bearer {suite.service_token}"),), timeout=5)
        assert len(signing.gateway.key) >= 32  # the gateway's: it signs download URLs with it
        # the service token gets past the door: storage answers about the object itself
        for ask in (lambda auth: stub.PresignObject(storage_service_pb2.PresignObjectRequest(key=key), metadata=auth,
                                                    timeout=5),
                    lambda auth: next(stub.GetObject(storage_service_pb2.GetObjectRequest(key=key), metadata=auth,
                                                     timeout=5))):
            with pytest.raises(grpc.RpcError) as missing:
                ask((("authorization", f"Bearer {suite.service_token}"),))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_the_scheduler_still_serves_a_user_token(suite: Suite) -> None:
    from comfyfleet.scheduler.v1 import user_service_pb2, user_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{suite.scheduler_port}") as channel:
        reply = user_service_pb2_grpc.UserServiceStub(channel).GetUser(
            user_service_pb2.GetUserRequest(), metadata=(("authorization", f"Bearer {suite.token}"),), timeout=5)
    assert reply.user.id
