"""The trainable parameters as numpy arrays, in a stable order: what federated learning sends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` for every parameter that requires grad, in registration order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def count_trainable(model: nn.Module) -> int:
    """How many numbers training changes."""
    return sum(p.numel() for _, p in trainable_parameters(model))


def trainable_state(model: nn.Module) -> list[npt.NDArray[np.float32]]:
    """Copies of the trainable parameters as float32 arrays, in ``trainable_parameters`` order."""
    return [
        p.detach().cpu().numpy().astype(np.float32, copy=True)
        for _, p in trainable_parameters(model)
    ]


def load_trainable_state(model: nn.Module, arrays: Sequence[npt.NDArray[Any]]) -> None:
    """Overwrite the trainable parameters with ``arrays`` (as from ``trainable_state``).

    All counts and shapes are checked before anything is written; a mismatch raises
    ``ValueError`` naming the parameter.
    """
    params = trainable_parameters(model)
    if len(arrays) != len(params):
        raise ValueError(
            f"expected {len(params)} arrays, one per trainable parameter, got {len(arrays)}"
        )
    for i, ((name, p), array) in enumerate(zip(params, arrays, strict=True)):
        if tuple(np.shape(array)) != tuple(p.shape):
            raise ValueError(
                f"array {i} ({name}) has shape {tuple(np.shape(array))}, expected {tuple(p.shape)}"
            )
    with torch.no_grad():
        for (_, p), array in zip(params, arrays, strict=True):
            p.copy_(torch.as_tensor(np.asarray(array)))
