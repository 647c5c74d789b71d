"""A device's privacy ledger: what each round of DP-SGD spent, and whether another fits.

One entry per round the device trained: the epsilon spent in all so far (at ``delta``), the
accountant that computed it, and the parameters that produced it (noise multiplier, sampling
rate, steps, clipping norm). The entries are the accountant's whole history, so epsilon can
always be recomputed from the ledger alone (``epsilon_of``), by anyone.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

from opacus.accountants import create_accountant

from fedrec.shared.federated.local import Accountant, accountant_options

#: One accounted mechanism: (noise multiplier, sampling rate, steps).
Mechanism = tuple[float, float, int]


@dataclass(frozen=True)
class LedgerEntry:
    """Round ``round`` of DP-SGD on a device; ``epsilon`` is the total after it."""

    round: int
    epsilon: float
    delta: float
    accountant: Accountant
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float

    @property
    def mechanism(self) -> Mechanism:
        return (self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class PrivacyLedger:
    """The entries of one device, oldest first."""

    entries: tuple[LedgerEntry, ...] = ()

    @property
    def spent(self) -> float:
        """Epsilon spent so far (0 before any round)."""
        return self.entries[-1].epsilon if self.entries else 0.0

    def history(self, accountant: Accountant) -> list[Mechanism]:
        """The mechanisms so far, for an ``accountant`` of the ledger's kind."""
        kinds = {e.accountant for e in self.entries}
        if kinds - {accountant}:
            raise ValueError(
                f"this device's ledger was kept with the {sorted(kinds)} accountant; "
                f"it cannot continue with {accountant!r}"
            )
        return [e.mechanism for e in self.entries]

    def with_entry(self, entry: LedgerEntry) -> PrivacyLedger:
        return PrivacyLedger((*self.entries, entry))

    def to_json(self) -> dict[str, Any]:
        return {"entries": [asdict(e) for e in self.entries]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrivacyLedger:
        try:
            return cls(tuple(LedgerEntry(**e) for e in data["entries"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed privacy ledger: {error}") from error


def epsilon_of(accountant: Accountant, history: list[Mechanism], delta: float) -> float:
    """Epsilon at ``delta`` of DP-SGD with these mechanisms, by ``accountant`` (0 for none).
    Mechanisms with the same noise multiplier and sampling rate are composed as one with their
    steps summed, as Opacus' accountants do when they step: the same epsilon, in time that
    does not grow with the rounds (a distributed-DP ledger has an entry per step)."""
    if not history:
        return 0.0
    steps: dict[tuple[float, float], int] = {}
    for s, q, n in history:
        key = (float(s), float(q))
        steps[key] = steps.get(key, 0) + int(n)
    return _merged_epsilon(accountant, tuple(steps.items()), float(delta))


@functools.lru_cache(maxsize=1024)
def _merged_epsilon(
    accountant: Accountant, merged: tuple[tuple[tuple[float, float], int], ...], delta: float
) -> float:
    """``epsilon_of`` a merged history, ((noise multiplier, sampling rate), steps) in order,
    kept for the next device with the same history (under distributed DP, every device that
    joined as many rounds) and for the same device's checks before and after its round."""
    counter = create_accountant(accountant)
    counter.history = [(s, q, n) for (s, q), n in merged]
    return float(counter.get_epsilon(delta, **accountant_options(accountant)))
