"""The ``dp-step`` benchmark: one DP-SGD step of the federated network, LSTM by LSTM.

A step is what ``train_local`` runs per batch under DP: the forward pass of every example's
context and candidates, the backward pass with Opacus' per-example gradients, clipping,
Gaussian noise and the optimiser's update. It is timed with Opacus' ``DPLSTM`` (what
``ModuleValidator.fix`` makes of ``nn.LSTM``) and with ``PerExampleLSTM`` (what ``train_local``
swaps in, ``fedrec.shared.federated.dp_lstm``), in turns, on the same synthetic batches; the
ratio is taken within each round and the median over rounds is reported (docs/benchmarks.md).
Before timing, one noiseless step of each must give the same clipped gradient.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from fedrec.benchmarks import BenchmarkReport
from fedrec.benchmarks.rank import machine_facts
from fedrec.shared.federated.dp_lstm import to_per_example_lstms
from fedrec.shared.federated.local import ExampleScorer
from fedrec.shared.federated.settings import federated_model
from fedrec.shared.model.network import ModelConfig, initial_network

TOLERANCE = 1e-5
"""Largest absolute difference allowed between the two clipped gradients."""

FIGURES = (  # in the order table() prints them: name, format
    ("speedup", "{:>12.2f}"),
    ("dplstm_s", "{:>12.3f}"),
    ("per_example_s", "{:>12.3f}"),
    ("dplstm_examples_per_s", "{:>12,.0f}"),
    ("per_example_examples_per_s", "{:>12,.0f}"),
    ("max_abs_diff", "{:>12.2e}"),
)


@dataclass(frozen=True)
class DPStepBenchmarkResult(BenchmarkReport):
    """Figures of one run of :func:`run_dp_step_benchmark`; times are medians per step."""

    TARGETS: ClassVar[dict[str, tuple[str, float]]] = {"speedup": (">=", 1.5)}

    n_items: int
    batch_size: int
    context: int
    negatives: int
    hidden_dim: int
    item_rank: int
    rounds: int
    seed: int
    speedup: float
    dplstm_s: float
    per_example_s: float
    dplstm_examples_per_s: float
    per_example_examples_per_s: float
    max_abs_diff: float
    same_gradients: bool
    machine: dict[str, Any]

    def table(self) -> str:
        lines = [
            f"dp-step: batches of {self.batch_size} examples ({self.context} events of context, "
            f"{self.negatives} negatives) over {self.n_items:,} items, LSTM {self.hidden_dim}, "
            f"item rank {self.item_rank}, {self.rounds} rounds, {self.machine['cpu_count']} "
            f"CPUs, 1-minute load {self.machine['load_average_1min']:.2f} at the end"
        ]
        lines += self.figure_lines(FIGURES)
        lines.append(
            f"{'same_gradients':<28}{self.same_gradients!s:>12}   (|diff| <= {TOLERANCE:g})"
        )
        return "\n".join(lines)


def run_dp_step_benchmark(
    n_items: int = 9_742,
    seed: int = 0,
    batch_size: int = 1024,
    rounds: int = 3,
    config: ModelConfig | None = None,
    context: int = 20,
    negatives: int = 100,
) -> DPStepBenchmarkResult:
    """Time DP-SGD steps of ``config``'s network (the federations': LSTM 128, item rank 16) on
    batches of ``batch_size`` synthetic examples over ``n_items`` items (ml-latest-small's
    9,742 by default), with Opacus' DPLSTM against ``PerExampleLSTM``, ``rounds`` times each
    after one untimed step."""
    if rounds < 1 or batch_size < 1 or n_items < 1:
        raise ValueError("the dp-step benchmark needs at least 1 round, example and item")
    config = config or federated_model()
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(n_items, config.feature_dim, generator=generator)
    network = initial_network(config, seed, table)
    with torch.no_grad():  # as after some training: the LSTM's path to the score is open
        network.users.project.weight.normal_(0.0, 0.05, generator=generator)
    per_example_network = copy.deepcopy(network)
    to_per_example_lstms(per_example_network)
    models = {
        "dplstm": ModuleValidator.fix(ExampleScorer(copy.deepcopy(network), table)),
        "per_example": ExampleScorer(per_example_network, table),
    }

    def batch() -> tuple[torch.Tensor, ...]:
        lengths = torch.randint(1, context + 1, (batch_size,), generator=generator)
        rows = torch.randint(n_items, (batch_size, context), generator=generator)
        rows = rows * (torch.arange(context)[None] < lengths[:, None])
        types = torch.randint(2, (batch_size, context), generator=generator)
        candidates = torch.randint(n_items, (batch_size, 1 + negatives), generator=generator)
        return rows, types, lengths, candidates

    checked = batch()
    gradients = {name: _clipped_gradient(model, checked) for name, model in models.items()}
    max_diff = max(
        float((a - b).abs().max())
        for a, b in zip(gradients["dplstm"], gradients["per_example"], strict=True)
    )

    steppers = {name: _DPStepper(model, batch_size) for name, model in models.items()}
    inputs = batch()
    for stepper in steppers.values():  # warm-up: threads, allocator
        stepper.step(inputs)
    seconds = {name: np.empty(rounds) for name in steppers}
    for r in range(rounds):
        inputs = batch()
        for name, stepper in steppers.items():
            start = time.perf_counter()
            stepper.step(inputs)
            seconds[name][r] = time.perf_counter() - start
    dplstm_s = float(np.median(seconds["dplstm"]))
    per_example_s = float(np.median(seconds["per_example"]))
    return DPStepBenchmarkResult(
        n_items=n_items,
        batch_size=batch_size,
        context=context,
        negatives=negatives,
        hidden_dim=config.hidden_dim,
        item_rank=config.item_rank,
        rounds=rounds,
        seed=seed,
        speedup=float(np.median(seconds["dplstm"] / seconds["per_example"])),
        dplstm_s=dplstm_s,
        per_example_s=per_example_s,
        dplstm_examples_per_s=batch_size / dplstm_s,
        per_example_examples_per_s=batch_size / per_example_s,
        max_abs_diff=max_diff,
        same_gradients=max_diff <= TOLERANCE,
        machine=machine_facts(),
    )


class _DPStepper:
    """A model under Opacus' per-example gradients with SGD wrapped in its DP optimiser (noise
    multiplier 0.644 and clipping to 1, fedrec pooled's on ml-latest-small)."""

    def __init__(self, model: nn.Module, batch_size: int, noise_multiplier: float = 0.644):
        self.model = GradSampleModule(model)
        self.optimizer = DPOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            noise_multiplier=noise_multiplier,
            max_grad_norm=1.0,
            expected_batch_size=batch_size,
        )

    def backward(self, inputs: tuple[torch.Tensor, ...]) -> None:
        """Per-example gradients of the loss on ``inputs`` (target: candidate 0)."""
        self.optimizer.zero_grad()
        logits = self.model(*inputs)
        F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long)).backward()  # type: ignore[no-untyped-call]

    def step(self, inputs: tuple[torch.Tensor, ...]) -> None:
        self.backward(inputs)
        self.optimizer.step()


def _clipped_gradient(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The clipped, noiseless mean gradient of ``model`` on ``inputs``, parameter by parameter
    in registration order (the same for both LSTMs), leaving ``model`` unchanged."""
    stepper = _DPStepper(copy.deepcopy(model), len(inputs[0]), noise_multiplier=0.0)
    stepper.backward(inputs)
    stepper.optimizer.pre_step()
    gradients = [p.grad.detach().clone() for p in stepper.optimizer.params if p.grad is not None]
    stepper.model._close()
    return gradients
