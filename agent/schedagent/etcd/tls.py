"""etcd over TLS: certificates read and checked once at start, and a client on a TLS channel."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aetcd
import grpc
from aetcd import rpc, watcher

from schedagent.config import EtcdConfig
from schedagent.errors import ConfigError

if TYPE_CHECKING:
    # Imported where certificates are read: an agent on plain http never needs x509.
    from cryptography import x509


@dataclasses.dataclass(frozen=True)
class EtcdTls:
    """What the agent shows etcd and what it trusts, as PEM bytes."""

    ca: bytes | None  # None: the system's CAs
    cert: bytes | None
    key: bytes | None
    server_name: str

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def load_etcd_tls(config: EtcdConfig, where: str) -> EtcdTls | None:
    """The TLS material for https:// endpoints (None for http://).

    Read at start so that a missing, unreadable, expired or mismatched file stops the
    agent with the file and the key at fault, instead of a handshake error on each retry.
    """
    if urlsplit(config.endpoints[0]).scheme != "https":
        return None
    ca = _read(where, "etcd.tls_ca", config.tls_ca)
    cert = _read(where, "etcd.tls_cert", config.tls_cert)
    key = _read(where, "etcd.tls_key", config.tls_key)
    if ca is not None:
        _certificate(where, "etcd.tls_ca", ca)
    if cert is not None and key is not None:
        _check_pair(where, config, cert, key)
    server_name = config.tls_server_name or urlsplit(config.endpoints[0]).hostname or ""
    return EtcdTls(ca=ca, cert=cert, key=key, server_name=server_name)


def _read(where: str, key: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(where, key, f"cannot read {path}: {exc.strerror or exc}") from None


def _certificate(where: str, key: str, pem: bytes) -> x509.Certificate:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ConfigError(where, key, "is not a PEM certificate") from None
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        raise ConfigError(where, key, f"the certificate expired on {cert.not_valid_after_utc}")
    return cert


def _check_pair(where: str, config: EtcdConfig, cert_pem: bytes, key_pem: bytes) -> None:
    from cryptography.hazmat.primitives import serialization

    cert = _certificate(where, "etcd.tls_cert", cert_pem)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        # TypeError: the key is encrypted; the agent has nobody to ask for a passphrase.
        raise ConfigError(where, "etcd.tls_key", f"is not an unencrypted PEM key: {exc}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != cert.public_key().public_bytes(
        encoding, public
    ):
        raise ConfigError(
            where, "etcd.tls_key", f"{config.tls_key} is not the key of {config.tls_cert}"
        )


class TlsClient(aetcd.Client):  # type: ignore[misc]  # aetcd ships no type information
    """aetcd's client on a TLS channel: aetcd 1.0 opens only plaintext ones.

    Opens the channel and stubs as aetcd.Client.connect does (pinned aetcd==1.0.0), minus
    its password login: the client certificate is what authenticates the agent.
    """

    def __init__(self, tls: EtcdTls, options: Mapping[str, object], **kwargs: Any) -> None:
        # The certificate must name tls.server_name, whatever address the target holds.
        named = {**options, "grpc.ssl_target_name_override": tls.server_name}
        super().__init__(options=named, **kwargs)
        self._credentials = tls.credentials()

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        target = f"{self._host}:{self._port}"
        self.channel = grpc.aio.secure_channel(
            target, self._credentials, options=list(self._options.items())
        )
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(
            rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()
