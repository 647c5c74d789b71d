"""The text encoder: tokenize, mean-pool over the attention mask, L2-normalise."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedrec.shared.encoder.config import EncoderConfig
from fedrec.shared.encoder.loading import load_encoder

PROGRESS_THRESHOLD = 1000
"""With ``EncoderConfig.progress=None``, jobs of more texts than this show a progress bar."""

# Architectures whose default position ids are 0..L-1 (RoBERTa-style ones offset them by the
# padding index, so passing arange there would change the output).
_ARANGE_POSITIONS = frozenset({"bert", "albert", "electra"})


class Batch(NamedTuple):
    """Token ids and attention mask, both ``(batch, length)``, on the encoder's device."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors ``(B, L, D)`` over the unmasked positions: ``(B, D)``."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class TextEncoder(nn.Module):
    """A transformer and its tokenizer, mapping texts to unit-length vectors of size ``dim``.

    ``forward`` is differentiable (for training, also under Opacus); ``encode`` is batched
    inference that returns numpy.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: EncoderConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        limit = min(
            int(getattr(model.config, "max_position_embeddings", self.config.max_length)),
            int(tokenizer.model_max_length),
        )
        if self.config.max_length > limit:
            raise ValueError(
                f"max_length {self.config.max_length} exceeds what model "
                f"{self.config.model!r} supports ({limit} tokens)"
            )
        self.model = model
        self.tokenizer = tokenizer
        takes = inspect.signature(model.forward).parameters
        self._pass_token_types = "token_type_ids" in takes
        self._pass_positions = (
            "position_ids" in takes and model.config.model_type in _ARANGE_POSITIONS
        )

    @classmethod
    def from_config(cls, config: EncoderConfig | None = None) -> TextEncoder:
        """Load the model named in ``config`` onto its device, in eval mode."""
        config = config or EncoderConfig()
        model, tokenizer = load_encoder(config.model)
        return cls(model, tokenizer, config).to(config.torch_device()).eval()

    @property
    def dim(self) -> int:
        """Length of each embedding."""
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return next(self.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> Batch:
        """Token ids and mask for ``texts``, padded to the longest, cut at ``max_length``."""
        encoded = self.tokenizer(
            _checked(texts),
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        return Batch(
            encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled, L2-normalised embeddings ``(B, dim)``; gradients flow.

        Token types (zeros) and positions (0..L-1, one row per example) are passed explicitly:
        the same values the model would use, but with a batch dimension, which Opacus needs for
        per-sample gradients of trainable embeddings. An empty batch (Opacus' Poisson sampling
        draws them) runs one all-padding row and drops it: a ``(0, dim)`` result whose
        per-sample gradients are zero, where the transformer alone would fail.
        """
        if len(input_ids) == 0:
            row = input_ids.new_zeros((1, max(input_ids.shape[1], 1)))
            return self.forward(row, torch.ones_like(row))[:0]
        extra: dict[str, torch.Tensor] = {}
        if self._pass_token_types:
            extra["token_type_ids"] = torch.zeros_like(input_ids)
        if self._pass_positions:
            batch, length = input_ids.shape
            positions = torch.arange(length, device=input_ids.device)
            extra["position_ids"] = positions.expand(batch, length).contiguous()
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return F.normalize(mean_pool(out.last_hidden_state, attention_mask), p=2, dim=1)

    def encode(
        self, texts: Sequence[str], *, sort_by_length: bool = True
    ) -> npt.NDArray[np.float32]:
        """Embeddings ``(len(texts), dim)``, float32, rows in the order of ``texts``.

        Runs in eval mode under ``torch.inference_mode`` (the training mode is restored after).
        ``sort_by_length`` batches texts of similar token counts together: less padding to run.
        """
        texts = _checked(texts)
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        order = np.arange(n)
        if sort_by_length and n > 1:
            order = np.argsort(-self._token_counts(texts), kind="stable")
        show = self.config.progress
        if show is None:
            show = n > PROGRESS_THRESHOLD
        was_training = self.training
        self.eval()
        try:
            with (
                torch.inference_mode(),
                tqdm(total=n, disable=not show, unit="text", desc="encoding") as bar,
            ):
                for start in range(0, n, self.config.batch_size):
                    rows = order[start : start + self.config.batch_size]
                    vectors = self(*self.tokenize([texts[i] for i in rows]))
                    out[rows] = vectors.float().cpu().numpy()
                    bar.update(len(rows))
        finally:
            self.train(was_training)
        return out

    def _token_counts(self, texts: list[str]) -> npt.NDArray[np.int64]:
        lengths = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.config.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
            return_length=True,
        )["length"]
        return np.asarray(lengths, dtype=np.int64)


def _checked(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
    return texts
