"""The device's copy of the global weights a federation does not train (the frozen parts).

They are public (the server sends them to every device) and do not change during a run, so a
device keeps the latest it was sent, in plain ``.npz`` beside its encrypted store, and the
server sends them again only to a device that has not answered a request carrying them. A copy
counts only if its digest is the one the server names in each request
(``fedrec.shared.federated.records.arrays_digest``): a stale, damaged or altered file is
ignored, never loaded.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
from numpy.lib.npyio import NpzFile

from fedrec.shared.federated.records import arrays_digest
from fedrec.shared.files import write_atomic

#: The file in a device's folder that holds its copy.
FROZEN_FILE = "frozen-weights.npz"

Arrays = dict[str, npt.NDArray[np.generic]]


class FrozenCache:
    """The frozen weights a device keeps in ``folder``, by digest."""

    def __init__(self, folder: Path) -> None:
        self.file = folder / FROZEN_FILE

    def load(self, digest: str) -> Arrays | None:
        """The weights whose digest is ``digest``, or None when the copy is missing, unreadable
        or other weights."""
        try:
            saved = np.load(self.file, allow_pickle=False)
            if not isinstance(saved, NpzFile):  # a lone .npy array in its place
                return None
            with saved:
                arrays: Arrays = {name: saved[name] for name in saved.files}
        except (OSError, ValueError, EOFError, KeyError, NotImplementedError, zipfile.BadZipFile):
            return None
        return arrays if arrays_digest(arrays) == digest else None

    def save(self, arrays: Arrays) -> None:
        """Keep ``arrays`` in place of any earlier copy (one atomic write)."""
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **arrays)
        self.file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.file, buffer.getvalue())
