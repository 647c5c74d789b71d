"""SecAgg+'s masks from a cryptographic generator keyed by the whole secret.

Flower's SecAgg+ (1.41) expands every mask, a device's private mask and each pairwise mask,
with ``pseudo_rand_gen``: numpy's MT19937 seeded with the 32-byte secret XOR-folded into 32
bits. MT19937 is predictable from its output, and 2**32 seeds can be searched; its draws also
stop one short of the modulus (``randint(0, modulus - 1)``). ``secure_mask`` expands the same
secret with ChaCha20 under a key derived from all of it (HKDF-SHA256), into integers uniform
on ``[0, modulus)``. ``use_secure_masks`` puts it in the place of ``pseudo_rand_gen`` in the
device's mod and the server's workflow, which must expand the same masks for them to cancel;
fedrec's apps call it before every secure exchange.
"""

from __future__ import annotations

from importlib import import_module

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: The modules whose ``pseudo_rand_gen`` (imported there by name) expands SecAgg+'s masks: the
#: device's mod and the server's workflow. Looked up by their full names, since the mod's
#: package exports a function under the mod module's name.
MASK_USERS = tuple(
    import_module(name)
    for name in (
        "flwr.client.mod.secure_aggregation.secaggplus_mod",
        "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
    )
)

_INFO = b"fedrec secagg+ mask v1"
_NONCE = bytes(16)  # one key per secret, and every secret masks one vector: no nonce reuse


def secure_mask(
    seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]
) -> list[npt.NDArray[np.int64]]:
    """One int64 array per shape in ``dimensions_list``, uniform on ``[0, num_range)``, from
    ChaCha20 keyed by HKDF-SHA256 of ``seed`` (``pseudo_rand_gen``'s signature).
    ``num_range`` must be a power of two up to 2**32, as SecAgg+'s modulus is."""
    if not seed:
        raise ValueError("a mask's seed must not be empty")
    if not 2 <= num_range <= 2**32 or num_range & (num_range - 1):
        raise ValueError(
            f"the mask's modulus must be a power of two in [2, 2**32], got {num_range}"
        )
    sizes = [int(np.prod(shape, dtype=np.int64)) for shape in dimensions_list]
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(seed)
    stream = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    words = np.frombuffer(stream.update(bytes(4 * sum(sizes))), dtype="<u4")
    values = (words & np.uint32(num_range - 1)).astype(np.int64)
    masks, start = [], 0
    for shape, size in zip(dimensions_list, sizes, strict=True):
        masks.append(values[start : start + size].reshape(shape))
        start += size
    return masks


def use_secure_masks() -> None:
    """Make Flower's SecAgg+ mod and workflow expand their masks with ``secure_mask``; a
    RuntimeError if either no longer has the generator to replace (another Flower)."""
    for module in MASK_USERS:
        if not hasattr(module, "pseudo_rand_gen"):
            raise RuntimeError(
                f"{module.__name__} has no pseudo_rand_gen to replace: this Flower's SecAgg+ "
                "would expand its masks with a generator fedrec has not checked"
            )
        module.pseudo_rand_gen = secure_mask  # type: ignore[attr-defined]
