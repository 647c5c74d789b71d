"""The shared text encoder: offline loading, pooled embeddings, private fine-tuning."""

from fedrec.shared.encoder.adapters import LoRALinear, apply_fine_tuning, transformer_blocks
from fedrec.shared.encoder.config import DEFAULT_MODEL, EncoderConfig, FineTuneConfig
from fedrec.shared.encoder.loading import EncoderLoadError, load_encoder
from fedrec.shared.encoder.model import Batch, TextEncoder, mean_pool
from fedrec.shared.encoder.state import (
    count_trainable,
    load_trainable_state,
    trainable_parameters,
    trainable_state,
)

__all__ = [
    "DEFAULT_MODEL",
    "Batch",
    "EncoderConfig",
    "EncoderLoadError",
    "FineTuneConfig",
    "LoRALinear",
    "TextEncoder",
    "apply_fine_tuning",
    "count_trainable",
    "load_encoder",
    "load_trainable_state",
    "mean_pool",
    "trainable_parameters",
    "trainable_state",
    "transformer_blocks",
]
