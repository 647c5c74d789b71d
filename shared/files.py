"""Durable file writes (the device's store and bundle, the server's run folder, JSON results),
reading the run folder's JSON files with errors that name the file and line and the value,
and the check of a folder a command writes into."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(
    file: Path,
    data: bytes,
    prefix: str | None = None,
    suffix: str = ".tmp",
    mode: int = 0o600,
) -> None:
    """Replace ``file`` with ``data`` all at once: write a temp file beside it (named
    ``prefix``..``suffix``, by default ``.NAME.``..``.tmp``) with permissions ``mode``
    (by default the owner's alone), fsync it, rename it over ``file``, fsync the folder. A
    crash leaves the old file or the new one, never a mix."""
    fd, temp = tempfile.mkstemp(dir=file.parent, prefix=prefix or f".{file.name}.", suffix=suffix)
    try:
        if mode != 0o600 and os.name != "nt":  # mkstemp's own
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, file)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(file.parent)


def write_json(file: Path, value: Any, indent: int = 2) -> None:
    """Write ``value`` to ``file`` as indented JSON with a final newline, all at once
    (``write_atomic``), readable by all (0644) like any result file."""
    text = json.dumps(value, indent=indent) + "\n"
    write_atomic(file, text.encode("utf-8"), mode=0o644)


def append_line(file: Path, line: str) -> None:
    """Append ``line`` and a newline to ``file`` (created readable by all, like any result
    file), fsynced before it returns."""
    with file.open("a", encoding="utf-8") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


def check_output_folder(folder: Path, what: str) -> None:
    """A ValueError when ``folder`` (``what``: "the run folder", say) exists and is not a
    folder, before a command writes into it."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} is a file, not a folder")


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (not possible on Windows)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; a ValueError that names the file and line when it is not
    JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}: invalid JSON ({err.msg})") from None


def read_json_lines(path: Path, keys: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one per non-blank line, each with ``keys``; a ValueError
    that names the file and line of the first that is not."""
    objects = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: invalid JSON ({err.msg})") from None
        if not isinstance(value, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object")
        missing = [key for key in keys if key not in value]
        if missing:
            raise ValueError(f"{path}, line {number}: missing {', '.join(missing)}")
        objects.append(value)
    return objects


def json_object(value: Any, what: str) -> dict[str, Any]:
    """``value`` when it is a JSON object; a ValueError naming ``what`` otherwise."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {value!r}")
    return value


def json_number(value: Any, what: str) -> float:
    """``value`` as a float when it is a finite JSON number (not a bool); a ValueError naming
    ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a number, got {value!r}")
    return float(value)
