"""TLS material and SuperNode authentication keys for a Flower deployment (``cryptography`` only).

- ``make_tls_material``: a self-signed CA and a SuperLink server certificate signed by it
  (SAN: the given host names / IP addresses). SuperLink:
  ``--ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key``;
  SuperNodes: ``--root-certificates ca.crt``; ``flwr`` CLI: ``root-certificates = "ca.crt"`` in
  the SuperLink connection of ``$FLWR_HOME/config.toml``.
- ``make_supernode_keypair``: an EC P-384 key pair in OpenSSH format, as flwr 1.41 expects for
  SuperNode authentication. The SuperLink runs with ``--enable-supernode-auth``; the operator
  registers each member's *public* key (``flwr supernode register member.pub <superlink>``), and
  the member starts the SuperNode with ``--auth-supernode-private-key member.key``. An
  unregistered SuperNode is refused.

In production the CA key stays with the operator and members generate their own key pairs (only
the public key is ever sent to the clearinghouse); these helpers are for tests and demos.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsMaterial:
    ca: Path
    cert: Path
    key: Path

    def as_dict(self) -> dict[str, str]:
        return {"ca": str(self.ca), "cert": str(self.cert), "key": str(self.key)}


def _write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _pkcs8_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey, name: x509.Name, now: dt.datetime, days: int
) -> x509.Certificate:
    """The self-signed CA (may sign end-entity certificates only)."""
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    *,
    hosts: Sequence[str],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    """The SuperLink's certificate, signed by the CA, for ``hosts`` (DNS names or IP addresses)."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )


def make_tls_material(
    directory: str | Path, *, hosts: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 30
) -> TlsMaterial:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Clearinghouse Flower CA")])
    ca_cert = _ca_certificate(ca_key, ca_name, now, days)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = _server_certificate(
        server_key, hosts=hosts, ca_key=ca_key, ca_name=ca_name, now=now, days=days
    )

    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(directory / "ca.key", _pkcs8_pem(ca_key))
    cert_path = directory / "server.pem"
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_path = _write_private(directory / "server.key", _pkcs8_pem(server_key))
    return TlsMaterial(ca=ca_path, cert=cert_path, key=key_path)


def make_supernode_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """``(private_key_path, public_key_path)`` for a SuperNode, OpenSSH format, EC P-384."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = _write_private(
        directory / f"{name}.key",
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    public = directory / f"{name}.pub"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + b"\n"
    )
    return private, public
