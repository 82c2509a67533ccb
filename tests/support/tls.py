"""TLS for tests: a certificate authority of the test's own, certificates it signs, and a Redis
server that speaks only TLS (as managed Redis services do) and asks each client for its
certificate (mutual TLS)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.processes import Process, port_open, wait_for

VALID = datetime.timedelta(days=1)


@dataclass
class Issued:
    """PEM files: the certificate and its private key."""

    cert: Path
    key: Path


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    issued = Issued(directory / f"{name}.crt", directory / f"{name}.key")
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    return issued


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALID))


class CertificateAuthority:
    """A self-signed CA (`ca.cert`, a PEM bundle of one) that issues server and client certificates."""

    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (_builder(name, self.name, self.key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.ca = _write(directory, name, cert, self.key)

    def issue(self, name: str, hosts: tuple[str, ...] = (), client: bool = False) -> Issued:
        """A certificate for `hosts` (IP addresses or DNS names), or for a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.IPAddress(ipaddress.ip_address(host)) if host[0].isdigit() else x509.DNSName(host)
                 for host in hosts]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = _builder(name, self.name, key.public_key()).add_extension(x509.ExtendedKeyUsage([usage]), False)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return _write(self.directory, name, builder.sign(self.key, hashes.SHA256()), key)


def start_tls_redis(port: int, workdir: Path, ca: CertificateAuthority, name: str = "redis-tls") -> Process:
    """A Redis server listening on `port` with TLS only (`--port 0`), for 127.0.0.1 and
    localhost, requiring a client certificate signed by `ca`; returns once it listens."""
    server = ca.issue(f"{name}-server", hosts=("127.0.0.1", "localhost"))
    process = Process(name, [
        "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(server.cert), "--tls-key-file", str(server.key),
        "--tls-ca-cert-file", str(ca.ca.cert), "--tls-auth-clients", "yes",
        "--save", "", "--appendonly", "no", "--dir", str(workdir),
    ], {}, workdir)
    wait_for(lambda: port_open(port) or not process.alive(), 10, f"{name} to listen")
    assert process.alive(), process.output()
    return process
