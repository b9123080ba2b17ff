"""TLS end to end: the real server with a certificate from a throwaway CA; clients that trust
that CA get through (generated stubs and `privtext client --tls-ca`), clients that do not
(plaintext, or another CA) are refused."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys

import grpc
import pytest
from server_kit import InProcess, corpus, jsonl

from service.api.gen.privtext.v1 import datasets_pb2, datasets_pb2_grpc


def make_ca(name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(ca_key, ca_cert):
    """A leaf for localhost and 127.0.0.1, signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def pem(obj) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if hasattr(obj, "public_bytes"):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Paths of: the CA that signed the server's certificate, another CA, the server's cert and key."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = make_ca("privtext test CA")
    _, other_ca = make_ca("some other CA")
    key, cert = make_server_cert(ca_key, ca_cert)
    paths = {"ca": d / "ca.pem", "other_ca": d / "other-ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    paths["ca"].write_bytes(pem(ca_cert))
    paths["other_ca"].write_bytes(pem(other_ca))
    paths["cert"].write_bytes(pem(cert))
    paths["key"].write_bytes(pem(key))
    paths["key"].chmod(0o600)
    return paths


@pytest.fixture(scope="module")
def tls_server(engine, pki, tmp_path_factory):
    from service.api.settings import ServerSettings

    root = tmp_path_factory.mktemp("tls-server")
    settings = ServerSettings(port=0, data_dir=root / "data", config_dir=root / "config", tls_cert=pki["cert"], tls_key=pki["key"])
    s = InProcess(settings, engine)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def dataset_id(tls_server, pki):
    """A dataset uploaded over TLS: listing it later shows the call reached this server."""
    with grpc.secure_channel(tls_server.address, grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())) as ch:
        data = jsonl(corpus(12))
        spec = datasets_pb2.DatasetSpec(name="over-tls", text_field="text", epsilon_cap=4.0, delta=1e-3, format="jsonl")
        reqs = [datasets_pb2.UploadRequest(spec=spec), datasets_pb2.UploadRequest(chunk=data)]
        return datasets_pb2_grpc.DatasetsStub(ch).UploadDataset(iter(reqs), timeout=60).id


def list_datasets(channel) -> list[str]:
    resp = datasets_pb2_grpc.DatasetsStub(channel).ListDatasets(datasets_pb2.ListDatasetsRequest(), timeout=30)
    return [d.id for d in resp.datasets]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # the certificate's IP and DNS names
def test_a_client_trusting_the_ca_gets_through(tls_server, pki, dataset_id, host):
    port = tls_server.server.port
    creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
    with grpc.secure_channel(f"{host}:{port}", creds) as ch:
        assert list_datasets(ch) == [dataset_id]


@pytest.mark.parametrize("client", ["plaintext", "other-ca"])
def test_a_client_not_speaking_tls_with_this_ca_is_refused(tls_server, pki, client):
    if client == "plaintext":
        ch = grpc.insecure_channel(tls_server.address)
    else:
        ch = grpc.secure_channel(tls_server.address, grpc.ssl_channel_credentials(root_certificates=pki["other_ca"].read_bytes()))
    with ch, pytest.raises(grpc.RpcError) as e:
        datasets_pb2_grpc.DatasetsStub(ch).ListDatasets(datasets_pb2.ListDatasetsRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "ca, rc",
    [("ca", 0), ("other_ca", 1), (None, 1)],
    ids=["trusted-ca", "other-ca", "plaintext"],
)
def test_cli_client_with_tls_ca(tls_server, pki, dataset_id, ca, rc):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVTEXT_")}
    cmd = [sys.executable, "-m", "service.cli", "client", "datasets", "list", "--server", tls_server.address, "--timeout", "10"]
    if ca:
        cmd += ["--tls-ca", str(pki[ca])]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == rc, out.stderr
    if rc == 0:
        assert out.stdout.split()[0] == dataset_id and "over-tls" in out.stdout
    else:
        assert "UNAVAILABLE" in out.stderr and dataset_id not in out.stdout
