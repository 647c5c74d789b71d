"""The randomness DP-SGD's guarantee rests on: which examples a step samples and its noise.

Both must be unpredictable to whoever sees a device's update. ``torch.Generator.manual_seed``
does not give that on the CPU: Mersenne Twister there is seeded from 32 bits of the seed, so
an update's sampling and noise could be found by trying every 2^32 seeds. ``secret_generator``
fills the generator's whole state (624 words of 32 bits) from the operating system's
cryptographic source instead. A CUDA generator (Philox) takes its whole 64-bit seed.
"""

from __future__ import annotations

import os
import secrets

import numpy as np
import torch

#: Mersenne Twister's state words, and where they sit in torch's CPU generator state:
#: after the initial seed (8 bytes), ``left`` and ``seeded`` (4 each) and ``next`` (8), one
#: uint64 slot per 32-bit word (``CPUGeneratorImplStateLegacy``).
MT_WORDS = 624
_WORDS_AT = 24


def secret_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on ``device`` whose state comes from ``os.urandom``."""
    generator = torch.Generator(device=device)
    if generator.device.type != "cpu":
        return generator.manual_seed(secrets.randbits(64))
    state = generator.manual_seed(0).get_state().numpy().copy()
    end = _WORDS_AT + 8 * MT_WORDS
    if state.size < end:
        raise RuntimeError(f"unexpected torch CPU generator state of {state.size} bytes")
    words = np.frombuffer(os.urandom(4 * MT_WORDS), dtype=np.uint32).astype(np.uint64)
    state[_WORDS_AT:end] = np.frombuffer(words.tobytes(), dtype=np.uint8)
    generator.set_state(torch.from_numpy(state))
    return generator
