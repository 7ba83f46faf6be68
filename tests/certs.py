"""Throw-away X.509 certificates for TLS tests, made with the ``openssl`` command line tool.

EC P-256 keys (fast to generate). A CA, certificates it signs (server: SAN for 127.0.0.1 and localhost;
clients: any CN, including the ``<site>/<device>`` form the broker uses as the username), all as PEM files.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.fail("the openssl command line tool is not installed")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr}")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertificateAuthority:
    directory: Path
    name: str
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path, name: str = "test-ca") -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        _openssl(
            "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory,
        )  # fmt: skip
        return cls(directory, name, cert, key)

    def issue(self, file_stem: str, common_name: str, *, server: bool = False) -> Issued:
        """A certificate signed by this CA. ``common_name`` may contain ``/`` (written through a config file,
        so no ``-subj`` escaping is involved)."""
        cert, key = self.directory / f"{file_stem}.crt", self.directory / f"{file_stem}.key"
        csr, conf = self.directory / f"{file_stem}.csr", self.directory / f"{file_stem}.cnf"
        usage = "serverAuth" if server else "clientAuth"
        san = "subjectAltName = IP:127.0.0.1, DNS:localhost\n" if server else ""
        conf.write_text(
            "[req]\nprompt = no\ndistinguished_name = dn\n"
            f"[dn]\nCN = {common_name}\n"
            f"[ext]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
            f"extendedKeyUsage = {usage}\n{san}"
        )
        _openssl(
            "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(csr), "-config", str(conf), cwd=self.directory,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key), "-CAcreateserial",
            "-out", str(cert), "-days", "2", "-extfile", str(conf), "-extensions", "ext", cwd=self.directory,
        )  # fmt: skip
        return Issued(cert, key)
