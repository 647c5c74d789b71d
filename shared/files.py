"""Durable file writes, for the device's store and bundle and the server's run folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(file: Path, data: bytes, prefix: str | None = None, suffix: str = ".tmp") -> None:
    """Replace ``file`` with ``data`` all at once: write a temp file beside it (named
    ``prefix``..``suffix``, by default ``.NAME.``..``.tmp``), fsync it, rename it over
    ``file``, fsync the folder. A crash leaves the old file or the new one, never a mix."""
    fd, temp = tempfile.mkstemp(dir=file.parent, prefix=prefix or f".{file.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, file)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(file.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (not possible on Windows)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
