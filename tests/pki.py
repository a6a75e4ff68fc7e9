"""Certificates for the TLS tests (tests/api/test_tls.py, tests/client), made by `openssl`:
a CA signing the daemon's certificate (for 127.0.0.1) and a client's, and another CA
signing a stranger's client certificate. P-256 keys, valid two days. Not a test module."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PKI:
    """A CA (signing the daemon's and a client's certificate) and another CA (signing a stranger's)."""

    ca: Path
    server: tuple[Path, Path]  # certificate, key
    client: tuple[Path, Path]
    other_ca: Path
    stranger: tuple[Path, Path]


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def _authority(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}")
    return cert, key


def _issue(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (directory / f"{name}{suffix}" for suffix in (".key", ".csr", ".crt", ".ext"))
    ext.write_text(extensions)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-days", "2", "-out", cert, "-extfile", ext)
    return cert, key


def make_pki(directory: Path) -> PKI:
    ca, other = _authority(directory, "cargohold-test-ca"), _authority(directory, "another-ca")
    server = _issue(directory, "server", ca, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    client = _issue(directory, "client", ca, "extendedKeyUsage=clientAuth\n")
    stranger = _issue(directory, "stranger", other, "extendedKeyUsage=clientAuth\n")
    return PKI(ca[0], server, client, other[0], stranger)
