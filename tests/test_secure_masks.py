"""SecAgg+'s masks: fedrec's generator against Flower's MT19937 (``pseudo_rand_gen``)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

from fedrec.shared.federated.secure_masks import MASK_USERS, secure_mask, use_secure_masks

SHAPES = [(3, 4), (), (1000,)]


def _folded_twin(seed: bytes) -> bytes:
    """``seed`` with two of its 4-byte words flipped by the same bits: XOR-folded into 32 bits
    (what Flower seeds MT19937 with), the two seeds are one."""
    flip = bytes([0x5A, 0xC3, 0x0F, 0x99])
    words = bytearray(seed)
    for start in (0, 4):
        word = words[start : start + 4]
        words[start : start + 4] = bytes(a ^ b for a, b in zip(word, flip, strict=True))
    return bytes(words)


def test_masks_depend_on_the_whole_secret() -> None:
    seed = bytes(range(32))
    twin = _folded_twin(seed)
    assert twin != seed
    # Flower's generator cannot tell the two secrets apart; fedrec's can
    flower = pseudo_rand_gen(seed, 2**32, SHAPES), pseudo_rand_gen(twin, 2**32, SHAPES)
    assert all(np.array_equal(a, b) for a, b in zip(*flower, strict=True))
    ours, theirs = secure_mask(seed, 2**32, SHAPES), secure_mask(twin, 2**32, SHAPES)
    assert not np.array_equal(ours[2], theirs[2])
    # and the same secret always gives the same masks (the device's and the server's)
    again = secure_mask(seed, 2**32, SHAPES)
    assert all(np.array_equal(a, b) for a, b in zip(ours, again, strict=True))


def test_masks_have_the_shapes_asked_and_cover_the_whole_modulus() -> None:
    masks = secure_mask(b"a pairwise key of any length", 2**32, SHAPES)
    assert [m.shape for m in masks] == SHAPES
    assert all(m.dtype == np.int64 for m in masks)
    values = np.concatenate([m.ravel() for m in masks])
    assert values.min() >= 0 and values.max() < 2**32
    # a small modulus shows every residue, evenly; Flower's draws never reach modulus - 1
    small = secure_mask(b"seed", 4, [(40_000,)])[0]
    counts = np.bincount(small, minlength=4)
    assert counts.sum() == 40_000 and np.all(np.abs(counts - 10_000) < 400)
    assert 3 not in pseudo_rand_gen(b"seed", 4, [(40_000,)])[0]


@pytest.mark.parametrize("modulus", [0, 1, 3, 1000, 2**32 + 1, 2**33])
def test_a_modulus_that_is_not_a_power_of_two_up_to_2_to_the_32_is_refused(modulus: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        secure_mask(b"seed", modulus, SHAPES)


def test_an_empty_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="seed"):
        secure_mask(b"", 2**32, SHAPES)


def test_flower_expands_its_masks_with_fedrecs_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in MASK_USERS:
        monkeypatch.setattr(module, "pseudo_rand_gen", pseudo_rand_gen)
    use_secure_masks()
    names = {module.__name__.rpartition(".")[2] for module in MASK_USERS}
    assert names == {"secaggplus_mod", "secaggplus_workflow"}
    assert all(module.pseudo_rand_gen is secure_mask for module in MASK_USERS)


def test_a_flower_without_the_generator_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(MASK_USERS[1], "pseudo_rand_gen")
    with pytest.raises(RuntimeError, match="pseudo_rand_gen"):
        use_secure_masks()
