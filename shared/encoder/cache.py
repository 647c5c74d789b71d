"""A disk cache of frozen-encoder embeddings, so the same texts are encoded once per machine.

Keyed by the model's identity, the truncation length and the texts themselves. Only for the
frozen encoder: fine-tuned weights give different embeddings and must not use it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedrec.shared.encoder.config import EncoderConfig
from fedrec.shared.encoder.loading import resolve_model_path
from fedrec.shared.encoder.model import TextEncoder

CACHE_FORMAT = 1


def cache_dir() -> Path:
    """``$FEDREC_CACHE_DIR``, else ``~/.cache/fedrec``; embeddings go in its ``embeddings/``."""
    root = os.environ.get("FEDREC_CACHE_DIR") or Path.home() / ".cache" / "fedrec"
    return Path(root) / "embeddings"


def cache_key(config: EncoderConfig, texts: Sequence[str]) -> str:
    """A digest of everything the embeddings depend on."""
    digest = hashlib.sha256(f"{CACHE_FORMAT}\n{config.model}\n{config.max_length}\n".encode())
    path, _ = resolve_model_path(config.model)
    folder = Path(path)
    if folder.is_dir():
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                stat = file.stat()
                digest.update(
                    f"{file.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode()
                )
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def encode_cached(
    config: EncoderConfig, texts: Sequence[str], encoder: TextEncoder | None = None
) -> npt.NDArray[np.float32]:
    """The frozen encoder's embeddings of ``texts``, from the cache when it has them."""
    path = cache_dir() / f"{cache_key(config, texts)}.npy"
    if path.is_file():
        cached = np.load(path, allow_pickle=False)
        if cached.shape[0] == len(texts):
            return np.asarray(cached, dtype=np.float32)
    vectors = (encoder or TextEncoder.from_config(config)).encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as out:
        np.save(out, vectors, allow_pickle=False)
    tmp.replace(path)
    return vectors
