"""The randomness DP-SGD's guarantee rests on: which examples a step samples and its noise.

Both must be unpredictable to whoever sees a device's update. ``torch.Generator.manual_seed``
does not give that on the CPU: Mersenne Twister there is seeded from 32 bits of the seed, so an
update's sampling and noise could be found by trying every 2^32 seeds. ``secret_generator``
fills the generator's whole state (624 words of 32 bits, 19,937 bits that matter) from the
operating system's cryptographic source instead. Mersenne Twister is not a cryptographic
generator: about 20,000 bits of its exact output give its state away, which a reply could
expose only where the clipped gradients of a whole tensor sum to exactly zero, so that the
tensor carries the noise alone. A CUDA generator (Philox) takes its whole 64-bit seed.
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
STATE_BYTES = 5056


def secret_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on ``device`` whose state comes from ``os.urandom``."""
    generator = torch.Generator(device=device)
    if generator.device.type != "cpu":
        return generator.manual_seed(secrets.randbits(64))
    state = generator.manual_seed(0).get_state().numpy().copy()
    end = _WORDS_AT + 8 * MT_WORDS
    template = state[_WORDS_AT : _WORDS_AT + 24].view(np.uint64)  # Mersenne Twister from 0
    if state.size != STATE_BYTES or list(template) != [0, 1, 1812433255]:
        raise RuntimeError(
            "torch's CPU generator state is not laid out as fedrec expects "
            f"({state.size} bytes); secret_generator must be updated for this torch"
        )
    words = np.frombuffer(os.urandom(4 * MT_WORDS), dtype=np.uint32).astype(np.uint64)
    state[_WORDS_AT:end] = np.frombuffer(words.tobytes(), dtype=np.uint8)
    generator.set_state(torch.from_numpy(state))
    return generator
