"""A private CA for one running stack: the API server's serving certificate, the training operator's
webhook certificate and the service-account signing key.

Why our own CA: the webhook is registered by URL on 127.0.0.1 (a Service reference would make the API
server dial a cluster IP), so the API server must trust a certificate for that address; and the
operator's cert rotator keeps a valid pair it finds in its Secret instead of minting one whose CA we
could not hand to the API server.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

VALID_FOR = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class Pair:
    cert: bytes
    key: bytes


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def make_ca(common_name: str, organization: str) -> tuple[Pair, rsa.RSAPrivateKey, x509.Certificate]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        # cert-controller verifies a CA against its name as a DNS SAN (Go ignores the CN).
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=True,
                                     content_commitment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Pair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)), key, cert


def make_server(ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate, common_name: str,
                dns_names: list[str], organization: str = "kubeflow-tasks-test") -> Pair:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                                 x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + VALID_FOR)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Pair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@dataclass(frozen=True)
class StackCerts:
    ca: Pair
    apiserver: Pair
    webhook_ca: Pair
    webhook: Pair
    service_account_key: bytes
    service_account_pub: bytes


def make_stack_certs(webhook_dns_name: str, webhook_ca_name: str, webhook_ca_org: str) -> StackCerts:
    ca, ca_key, ca_cert = make_ca("kubeflow-tasks-test-ca", "kubeflow-tasks-test")
    apiserver = make_server(ca_key, ca_cert, "kube-apiserver", ["localhost", "kubernetes", "kubernetes.default"])
    # The operator's rotator checks its CA by name and its serving certificate by the Service's DNS
    # name; 127.0.0.1 is added so the API server can call the webhook by URL.
    webhook_ca, wca_key, wca_cert = make_ca(webhook_ca_name, webhook_ca_org)
    webhook = make_server(wca_key, wca_cert, webhook_dns_name, [webhook_dns_name], webhook_ca_org)
    sa = _key()
    return StackCerts(
        ca=ca, apiserver=apiserver, webhook_ca=webhook_ca, webhook=webhook,
        service_account_key=_pem_key(sa),
        service_account_pub=sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo),
    )


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path
