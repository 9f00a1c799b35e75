"""Who may call a gRPC server: one interceptor, installed by every server with its rules.

Every call must carry a credential; which kinds a method takes is the server's rule for it:

    SERVICE   the suite's shared service token, `authorization: Bearer <token>` metadata;
              checked here (constant time, against its SHA-256). Service-to-service calls:
              gateway, scheduler and runners -> storage.
    USER      a user's API token in the same metadata (the gateway forwards the caller's);
              its presence is checked here, its validity by the servicer (identity store).
    POOL      an administrator's pool token, likewise (RunnerPoolService).
    RUNNER    a runner token in the first message of the session stream (Hello); checked by
              the session servicer, which refuses the stream before anything else.

A method no rule names is refused (UNAUTHENTICATED), so a service added to a server without a
rule is closed, not open. Health and reflection stay open (Kubernetes probes use them). The
rules are keyed by "/package.Service/" (every method of it) or "/package.Service/Method".

The service token comes from COMFYFLEET_SERVICE_TOKEN, or the file COMFYFLEET_SERVICE_TOKEN_FILE
(at least 32 characters); `make run` writes one to ./var/service-token. A process's
`ServiceSecurity` (token + mTLS files, tls.py) opens its channels to the other services:
`channel(target, options, as_service=True)` adds the token to every call that carries no
authorization of its own (`TokenChannel`).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from services.common.errors import Unauthenticated, abort
from services.common.tls import TlsFiles
from services.common.tls import channel as tls_channel

TOKEN_ENV = "COMFYFLEET_SERVICE_TOKEN"
TOKEN_FILE_ENV = "COMFYFLEET_SERVICE_TOKEN_FILE"
MIN_TOKEN_CHARS = 32
AUTHORIZATION = "authorization"
ALWAYS_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class Credential(enum.StrEnum):
    """A kind of credential a method accepts (see the module doc)."""

    SERVICE = "service"
    USER = "user"
    POOL = "pool"
    RUNNER = "runner"


Rules = Mapping[str, Iterable[Credential]]


class ServiceToken:
    """The service token as the server keeps it: its SHA-256 only."""

    def __init__(self, token: str) -> None:
        self._digest = hashlib.sha256(token.encode()).digest()

    def accepts(self, presented: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self._digest)


def service_token_from_env(env: Mapping[str, str]) -> str:
    """COMFYFLEET_SERVICE_TOKEN, else the content of COMFYFLEET_SERVICE_TOKEN_FILE, else "".
    ValueError when the file cannot be read or the token is too short."""
    token = env.get(TOKEN_ENV, "").strip()
    if not token and (path := env.get(TOKEN_FILE_ENV, "").strip()):
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ValueError(f"cannot read {TOKEN_FILE_ENV} {path!r}: {err.strerror}") from None
    if token and len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the service token must have at least {MIN_TOKEN_CHARS} characters")
    return token


def bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of the first `authorization: Bearer <token>` metadata; "" if malformed; None if absent."""
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def _refusal(message: str, reason: str) -> grpc.RpcMethodHandler:
    async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await abort(context, Unauthenticated(message, reason=reason))

    return grpc.stream_stream_rpc_method_handler(refuse)  # any cardinality: it reads nothing


class ServiceAuth(grpc.aio.ServerInterceptor):
    """Refuses every call whose credential its method's rule does not accept (module doc)."""

    def __init__(self, rules: Rules, token: ServiceToken | None) -> None:
        self._rules = {key: frozenset(kinds) for key, kinds in rules.items()}
        self._token = token
        if token is None and any(Credential.SERVICE in kinds for kinds in self._rules.values()):
            raise ValueError(f"{TOKEN_ENV} or {TOKEN_FILE_ENV} is required: this server takes service calls")

    def accepts(self, method: str) -> frozenset[Credential]:
        """The credential kinds `method` takes (empty: refused whatever it carries)."""
        found = self._rules.get(method)
        if found is None:
            found = self._rules.get(method[: method.rfind("/") + 1], frozenset())
        return found

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = getattr(handler_call_details, "method", "") or ""
        if method.startswith(ALWAYS_OPEN):
            return await continuation(handler_call_details)
        kinds = self.accepts(method)
        if not kinds:
            return _refusal(f"{method} takes no credential", "METHOD_NOT_OPEN")
        if Credential.RUNNER in kinds:
            return await continuation(handler_call_details)  # the token is in the stream's first message
        token = bearer(getattr(handler_call_details, "invocation_metadata", None))
        if token is None:
            return _refusal("missing bearer token", "TOKEN_MISSING")
        if not token:
            return _refusal("authorization must be 'Bearer <token>'", "TOKEN_MALFORMED")
        if Credential.SERVICE in kinds and self._token is not None and self._token.accepts(token):
            return await continuation(handler_call_details)
        if kinds & {Credential.USER, Credential.POOL}:
            return await continuation(handler_call_details)  # the servicer checks the token
        return _refusal("invalid service token", "SERVICE_TOKEN_INVALID")


def with_authorization(metadata: Any, value: str) -> Any:
    """`metadata` plus `authorization: value`, unless it already has an authorization."""
    pairs = tuple(metadata or ())
    if any(key == AUTHORIZATION for key, _ in pairs):
        return metadata
    return (*pairs, (AUTHORIZATION, value))


class _AddsToken:
    """A multicallable (what a stub calls) that gives each call the service token."""

    def __init__(self, inner: Any, value: str) -> None:
        self._inner = inner
        self._value = value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) > 2:  # (request, timeout, metadata, ...) given by position
            args = (*args[:2], with_authorization(args[2], self._value), *args[3:])
        else:
            kwargs["metadata"] = with_authorization(kwargs.get("metadata"), self._value)
        return self._inner(*args, **kwargs)


class TokenChannel(grpc.aio.Channel):
    """A grpc.aio channel whose every call without an authorization carries the service token.

    It wraps the multicallables rather than installing a client interceptor: an intercepted
    call's `write()` raises InvalidStateError, not the AioRpcError (UNAVAILABLE) the clients
    handle, when the peer is gone (tests/faults: storage down mid-upload).
    """

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self._channel = channel
        self._value = f"Bearer {token}"

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _AddsToken(self._channel.unary_unary(*args, **kwargs), self._value)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _AddsToken(self._channel.unary_stream(*args, **kwargs), self._value)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _AddsToken(self._channel.stream_unary(*args, **kwargs), self._value)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _AddsToken(self._channel.stream_stream(*args, **kwargs), self._value)

    async def __aenter__(self) -> TokenChannel:
        return self

    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        await self._channel.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()


@dataclasses.dataclass(frozen=True)
class ServiceSecurity:
    """How this process proves itself to the other services and protects the wire to them."""

    service_token: str = dataclasses.field(default="", repr=False)
    tls: TlsFiles | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ServiceSecurity:
        """COMFYFLEET_SERVICE_TOKEN[_FILE] and COMFYFLEET_TLS_*; ValueError with a clear message."""
        return cls(service_token=service_token_from_env(env), tls=TlsFiles.from_env(env))

    def channel(
        self, target: str, options: Sequence[tuple[str, Any]], *, as_service: bool = True
    ) -> grpc.aio.Channel:
        """A channel to another service: TLS when configured; with `as_service`, every call
        without an authorization of its own carries the service token."""
        channel = tls_channel(target, self.tls, options=options)
        return TokenChannel(channel, self.service_token) if as_service and self.service_token else channel

    def server_auth(self, rules: Rules) -> ServiceAuth:
        return ServiceAuth(rules, ServiceToken(self.service_token) if self.service_token else None)


PLAIN = ServiceSecurity()  # no token, no TLS: in-process test servers, which install no ServiceAuth
