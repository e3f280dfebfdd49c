"""Test certificates made with openssl, the way the Ansible roles make them."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> Path:
    """A self-signed CA; its key lies next to it as NAME.key."""
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl(
        *("req", "-x509", *EC_KEY, "-keyout", str(key), "-out", str(cert), "-days", "2"),
        *("-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )
    return cert


def make_cert(
    directory: Path, ca: Path, name: str, sans: Sequence[str], days: int = 2
) -> tuple[Path, Path]:
    """A certificate for name signed by ca, good as server and as client; (cert, key).

    sans are subjectAltName entries such as "IP:127.0.0.1" or "DNS:etcd.test".
    """
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    _openssl("req", *EC_KEY, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    ext = directory / f"{name}.ext"
    ext.write_text(
        f"subjectAltName={','.join(sans)}\nextendedKeyUsage=serverAuth,clientAuth\n"
        "basicConstraints=critical,CA:FALSE\n"
    )
    _openssl(
        *("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca.with_suffix(".key"))),
        *("-CAcreateserial", "-days", str(days), "-out", str(cert), "-extfile", str(ext)),
    )
    return cert, key
