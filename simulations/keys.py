"""Keys of simulated devices: each virtual device's store key, derived from one run secret
(a real device keeps its own key in its platform keystore)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECRET_FILE = "simulation.key"


def ensure_secret(out: Path) -> None:
    """Create the run secret in ``out`` once (mode 0600); the server does it before round 1."""
    out.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=out)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))
        os.link(temp, out / SECRET_FILE)
    except FileExistsError:
        pass
    finally:
        os.unlink(temp)


def device_key(out: Path, user_id: str) -> bytes:
    """The 32-byte store key of the simulated device of ``user_id`` in run folder ``out``."""
    secret_file = out / SECRET_FILE
    try:
        secret = secret_file.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{secret_file} is missing: the server creates it") from None
    if len(secret) != 32:
        raise ValueError(f"{secret_file} is not a 32-byte key")
    hkdf = HKDF(hashes.SHA256(), 32, salt=None, info=b"fedrec simulated device " + user_id.encode())
    return hkdf.derive(secret)
