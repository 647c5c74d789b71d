"""Symmetric per-row int8 quantization of embedding matrices (4x smaller than float32).

Row i is stored as ``codes[i] * scales[i]``; for a query q,
``q . row_i = scales[i] * (q . codes[i])``, so ranking needs no dequantized copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]
Int8Array = npt.NDArray[np.int8]


@dataclass(frozen=True)
class QuantizedMatrix:
    """An (n, d) matrix as int8 codes and one float32 scale per row."""

    codes: Int8Array
    scales: Float32Array

    def __post_init__(self) -> None:
        if self.codes.dtype != np.int8 or self.codes.ndim != 2:
            raise ValueError(
                f"codes must be a 2-d int8 array, got {self.codes.dtype} {self.codes.shape}"
            )
        if self.scales.dtype != np.float32 or self.scales.shape != (self.codes.shape[0],):
            raise ValueError(
                f"scales must be float32 of shape ({self.codes.shape[0]},), got "
                f"{self.scales.dtype} {self.scales.shape}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    def dequantize(self) -> Float32Array:
        """The float32 matrix the codes approximate."""
        return self.codes.astype(np.float32) * self.scales[:, None]


def quantize_int8(matrix: npt.NDArray[np.floating]) -> QuantizedMatrix:
    """Quantize each row to int8 with its own scale (max |value| / 127); rows of zeros stay zero."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-d matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("cannot quantize a matrix with NaN or infinite values")
    peak = np.abs(matrix).max(axis=1)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(matrix / scales[:, None]), -127, 127).astype(np.int8)
    return QuantizedMatrix(codes, scales)
