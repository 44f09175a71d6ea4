"""HTTPS through Gradio's own launch options (--ssl-certfile, --ssl-keyfile, --ssl-keyfile-password): a
self-signed certificate serves the page and /generate; a missing, unreadable or mismatched file, or a wrong
password, stops the start with a clear message and exit code 2."""

from __future__ import annotations

import datetime
import ipaddress
import re
from pathlib import Path

import httpx
import pytest
from conftest import request_kwargs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gradio_client import Client

from glmimage.config import load_settings
from glmimage.web.server import main


def self_signed(folder: Path, name: str = "server", password: bytes | None = None) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 and its key (encrypted with ``password`` if given)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return cert_path, key_path


def test_the_page_and_generate_are_served_over_https_with_a_self_signed_certificate(start_server, tmp_path):
    cert, key = self_signed(tmp_path, password=b"key password")
    server = start_server(ssl_certfile=str(cert), ssl_keyfile=str(key), ssl_keyfile_password="key password")
    url = f"https://127.0.0.1:{server.settings.port}/"
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https", "http"), timeout=10)  # no plain HTTP on that port
    assert httpx.get(url, verify=str(cert), timeout=10).status_code == 200  # the certificate is the one given
    client = Client(url, ssl_verify=False, verbose=False)
    images, seed, details = client.predict(**request_kwargs(), api_name="/generate")
    assert len(images) == 1 and Path(images[0]["image"]).stat().st_size > 0
    assert seed == request_kwargs()["seed"] and details["parameters"]["width"] == 512
    client.close()


def test_the_key_password_is_never_printed_with_the_settings(tmp_path):
    cert, key = self_signed(tmp_path, password=b"do-not-print-me")
    settings = load_settings(
        ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
        environ={"GLMIMAGE_SSL_KEYFILE_PASSWORD": "do-not-print-me"},
    )
    assert settings.tls and settings.ssl_keyfile_password == "do-not-print-me"
    assert "do-not-print-me" not in repr(settings)


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("missing certificate", "--ssl-certfile .*missing.crt: no such file"),
        ("missing key", "--ssl-keyfile .*missing.key: no such file"),
        ("key without certificate", "--ssl-keyfile needs --ssl-certfile"),
        ("not a certificate", "could not be loaded"),
        ("key of another certificate", "could not be loaded"),
        ("wrong password", "could not be loaded"),
    ],
)
def test_a_bad_tls_setting_stops_the_start_with_a_message_and_exit_code_2(tmp_path, capsys, problem, expected):
    cert, key = self_signed(tmp_path)
    _, other_key = self_signed(tmp_path, "other")
    _, locked_key = self_signed(tmp_path, "locked", password=b"right")
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate")
    flags = {
        "missing certificate": ["--ssl-certfile", str(tmp_path / "missing.crt"), "--ssl-keyfile", str(key)],
        "missing key": ["--ssl-certfile", str(cert), "--ssl-keyfile", str(tmp_path / "missing.key")],
        "key without certificate": ["--ssl-keyfile", str(key)],
        "not a certificate": ["--ssl-certfile", str(garbage), "--ssl-keyfile", str(key)],
        "key of another certificate": ["--ssl-certfile", str(cert), "--ssl-keyfile", str(other_key)],
        "wrong password": [
            "--ssl-certfile",
            str(cert),
            "--ssl-keyfile",
            str(locked_key),
            "--ssl-keyfile-password",
            "wrong",
        ],
    }[problem]
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("app.py: error: --ssl-")
    assert re.search(expected, err), err
