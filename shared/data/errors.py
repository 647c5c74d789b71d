"""The one error type for bad input data: it always names the file, and the line where known."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Input data that fedrec cannot use as it is. Nothing is loaded when this is raised."""

    def __init__(self, message: str, path: Path | str | None = None, line: int | None = None):
        self.path = Path(path) if path is not None else None
        self.line = line
        self.reason = message
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
