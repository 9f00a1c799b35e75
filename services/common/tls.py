"""TLS between the services (mutual: both ends show a certificate signed by one CA).

Every process reads the same three settings; all or none of them must be set:

    COMFYFLEET_TLS_CERT_FILE   PEM certificate this process shows (as a gRPC server, and as a
                               client to the other services: give it both serverAuth and
                               clientAuth usage, and the names/IPs it is reached by)
    COMFYFLEET_TLS_KEY_FILE    its private key (PEM)
    COMFYFLEET_TLS_CA_FILE     PEM bundle of the CA that signs every service's certificate

With them, every gRPC server listens with TLS and refuses a client without a certificate from
that CA (`server_credentials`), and every channel to another service uses TLS with this
process's certificate (`channel`). Without them, listeners and channels are plain, as before.
The files are read once, at start; a renewed certificate takes a restart.

The gateway's public HTTPS listener has its own settings (GATEWAY_TLS_CERT_FILE/KEY_FILE,
services/gateway/config.py): browsers need a certificate for the public name, not the CA's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

CERT = "COMFYFLEET_TLS_CERT_FILE"
KEY = "COMFYFLEET_TLS_KEY_FILE"
CA = "COMFYFLEET_TLS_CA_FILE"


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """A process's certificate, key and the services' CA, as PEM bytes."""

    cert: bytes
    key: bytes = dataclasses.field(repr=False)
    ca: bytes

    @classmethod
    def load(cls, cert_file: str | Path, key_file: str | Path, ca_file: str | Path) -> TlsFiles:
        """Reads the three PEM files; ValueError naming the file that cannot be read."""
        return cls(cert=_read(cert_file, "certificate"), key=_read(key_file, "private key"),
                   ca=_read(ca_file, "CA certificate"))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TlsFiles | None:
        """The COMFYFLEET_TLS_* files, or None when none is set; ValueError when only some are."""
        paths = {name: env.get(name, "").strip() for name in (CERT, KEY, CA)}
        if not any(paths.values()):
            return None
        missing = [name for name, value in paths.items() if not value]
        if missing:
            raise ValueError(f"TLS needs {CERT}, {KEY} and {CA} together; missing {', '.join(missing)}")
        return cls.load(paths[CERT], paths[KEY], paths[CA])

    def server_credentials(self) -> grpc.ServerCredentials:
        """TLS for a gRPC server that requires a client certificate signed by the CA (mTLS)."""
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS for a channel: trusts the CA, and shows this process's certificate."""
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


def bind(server: grpc.aio.Server, address: str, tls: TlsFiles | None) -> int:
    """Adds the listening port (TLS with client certificates when `tls`); OSError if it cannot bind."""
    port = server.add_secure_port(address, tls.server_credentials()) if tls else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return port


def channel(target: str, tls: TlsFiles | None, *, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A grpc.aio channel to `target`: TLS with this process's certificate when `tls`, else plain."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=list(options))


def _read(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read the TLS {what} {str(path)!r}: {err.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"the TLS {what} {str(path)!r} is not PEM")
    return data
