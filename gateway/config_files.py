"""The files a valid config names: they must exist and be readable by the user the service runs as.

``config validate``, ``doctor`` and ``run`` check them, so a wrong path is reported with its key and line where
it can be fixed, not as a TLS or broker error minutes later. Run as root (``install.sh``, ``sudo colpo-gateway
config validate``) with the unit's ``colposcopy`` user present, the check is made for that user (owner, group and
other permission bits of the file and the folders above it; ACLs are not read), otherwise for the current user.

Errors: ``broker.ca_file``, ``broker.cert_file``, ``broker.key_file`` and ``broker.password_file`` missing or
unreadable, a key file without a certificate, a certificate without a key (one PEM may hold both). A warning: no
model manifest at ``models.manifest`` (the gateway then judges with the classical assessor and reports
``degraded``).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import GatewayConfig, key_lines

SERVICE_USER = "colposcopy"
"""The unit's ``User=``."""


@dataclass
class FileReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def service_user() -> pwd.struct_passwd | None:
    """The user to check for: the unit's user when running as root and it exists, else None (this process)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None


def _may(st: os.stat_result, user: pwd.struct_passwd, groups: set[int], bits: tuple[int, int, int]) -> bool:
    if st.st_uid == user.pw_uid:
        return bool(st.st_mode & bits[0])
    if st.st_gid in groups:
        return bool(st.st_mode & bits[1])
    return bool(st.st_mode & bits[2])


def unreadable(path: Path, user: pwd.struct_passwd | None) -> str | None:
    """Why ``user`` (None: this process) cannot read the file ``path``, or None if it can."""
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    if user is None or user.pw_uid == 0:
        return None if os.access(path, os.R_OK) else f"is not readable by {pwd.getpwuid(os.geteuid()).pw_name}"
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    resolved = path.resolve()
    for folder in reversed(resolved.parents):
        if not _may(folder.stat(), user, groups, (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)):
            return f"is not readable by {user.pw_name}: the folder {folder} is closed to it"
    if not _may(resolved.stat(), user, groups, (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)):
        return f"is not readable by {user.pw_name} (the service's user)"
    return None


def _has_key(pem: Path) -> bool:
    return "PRIVATE KEY-----" in pem.read_text(errors="replace")


def check_files(config: GatewayConfig, source: Path | None, user: pwd.struct_passwd | None = None) -> FileReport:
    """Problems with the files ``config`` names; ``source`` is the config file (for the lines of the keys)."""
    text = ""
    if source is not None:
        try:
            text = source.read_text()
        except OSError:
            text = ""
    lines = key_lines(text)
    name = str(source) if source is not None else "<config>"

    def where(*key: str) -> str:
        line = next((lines[key[:n]] for n in range(len(key), 0, -1) if key[:n] in lines), None)
        return f"{name}:{line}: {'.'.join(key)}" if line is not None else f"{name}: {'.'.join(key)}"

    report = FileReport()
    broker = config.broker
    for key, path in (
        ("ca_file", broker.ca_file),
        ("cert_file", broker.cert_file),
        ("key_file", broker.key_file),
        ("password_file", broker.password_file),
    ):
        if path is not None and (why := unreadable(path, user)):
            report.errors.append(f"{where('broker', key)}: {path} {why}")
    if broker.key_file is not None and broker.cert_file is None:
        report.errors.append(f"{where('broker', 'key_file')}: set without broker.cert_file (the client certificate)")
    cert = broker.cert_file
    if cert is not None and broker.key_file is None and not unreadable(cert, None) and not _has_key(cert):
        report.errors.append(
            f"{where('broker', 'cert_file')}: {cert} holds no private key: set broker.key_file,"
            " or put the key in the same PEM file"
        )
    if config.backend != "classical":
        manifest = config.models.manifest_path()
        why = unreadable(manifest, user)
        if why == "does not exist":
            report.warnings.append(
                f"{where('models', 'manifest')}: no model manifest at {manifest}: the gateway judges with the"
                " classical assessor and reports degraded (set models.manifest, or backend: classical)"
            )
        elif why:
            report.errors.append(f"{where('models', 'manifest')}: {manifest} {why}")
    return report
