"""The LSTM that DP training swaps in: nn.LSTM's outputs, and per-example gradients equal to
those of nn.LSTM one example at a time and to Opacus' own DPLSTM's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn

from fedrec.shared.federated.dp_lstm import (
    LSTM_NAMES,
    PerExampleLSTM,
    to_per_example_lstms,
    to_torch_lstms,
)
from fedrec.shared.federated.local import ExampleScorer
from fedrec.shared.model.network import ModelConfig, Recommender

SMALL = ModelConfig(feature_dim=12, item_dim=12, hidden_dim=8, pool_window=3, start_events=2)


def test_outputs_and_per_example_gradients_equal_nn_lstm_one_example_at_a_time() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 4, batch_first=True)
    inputs, weights = torch.randn(5, 7, 6), torch.randn(5, 7, 4)
    expected: dict[str, list[torch.Tensor]] = {name: [] for name in LSTM_NAMES}
    for b in range(len(inputs)):
        lstm.zero_grad()
        (lstm(inputs[b : b + 1])[0] * weights[b : b + 1]).sum().backward()  # type: ignore[no-untyped-call]
        for name, parameter in lstm.named_parameters():
            expected[name].append(parameter.grad.clone())  # type: ignore[union-attr]

    sampled = GradSampleModule(PerExampleLSTM.of(lstm), loss_reduction="sum")
    hidden, final = sampled(inputs)
    assert final is None
    torch.testing.assert_close(hidden, lstm(inputs)[0])
    (hidden * weights).sum().backward()  # type: ignore[no-untyped-call]
    ours = dict(sampled._module.named_parameters())
    for name, swapped in LSTM_NAMES.items():
        torch.testing.assert_close(
            ours[swapped].grad_sample, torch.stack(expected[name]), rtol=1e-5, atol=1e-6
        )


def test_per_example_gradients_of_the_network_equal_opacus_dplstm() -> None:
    """The recommender's LSTM inside the training scorer, with a partly frozen LSTM."""
    torch.manual_seed(1)
    network = Recommender(SMALL)
    with torch.no_grad():  # away from the zero init, so the LSTM has a gradient
        network.users.project.weight.normal_(0, 0.5)
    table = torch.randn(30, 12)
    batch = 6
    lengths = torch.tensor([1, 2, 4, 5, 5, 3])
    rows = torch.randint(30, (batch, 5)) * (torch.arange(5)[None] < lengths[:, None])
    inputs = (rows, torch.randint(2, (batch, 5)), lengths, torch.randint(30, (batch, 4)))

    def per_example(scorer: nn.Module) -> dict[str, torch.Tensor]:
        for name, parameter in scorer.named_parameters():
            parameter.requires_grad_("bias_ih" not in name and "input.bias" not in name)
        sampled = GradSampleModule(scorer)
        loss = F.cross_entropy(sampled(*inputs), torch.zeros(batch, dtype=torch.long))
        loss.backward()  # type: ignore[no-untyped-call]
        return {
            name: parameter.grad_sample
            for name, parameter in scorer.named_parameters()
            if parameter.requires_grad
        }

    opacus = per_example(ModuleValidator.fix(ExampleScorer(copy.deepcopy(network), table)))
    swapped_network = copy.deepcopy(network)
    to_per_example_lstms(swapped_network)
    ours = per_example(ExampleScorer(swapped_network, table))
    lstm = "network.users.lstm."
    pairs = {f"{lstm}{name}": f"{lstm}{swapped}" for name, swapped in LSTM_NAMES.items()}
    assert set(ours) == {pairs.get(name, name) for name in opacus}
    for name, gradient in opacus.items():
        torch.testing.assert_close(ours[pairs.get(name, name)], gradient, rtol=1e-4, atol=1e-6)
    assert float(ours[f"{lstm}recurrence.weight"].abs().sum()) > 0


def test_swapping_in_and_back_keeps_every_weight_under_its_name() -> None:
    network = Recommender(SMALL)
    before = copy.deepcopy(network.state_dict())
    to_per_example_lstms(network)
    assert isinstance(network.users.lstm, PerExampleLSTM)
    assert not any(isinstance(m, nn.LSTM) for m in network.modules())
    to_torch_lstms(network)
    assert isinstance(network.users.lstm, nn.LSTM)
    after = network.state_dict()
    assert list(after) == list(before)
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    "lstm",
    [
        nn.LSTM(4, 3, num_layers=2, batch_first=True),
        nn.LSTM(4, 3),
        nn.LSTM(4, 3, batch_first=True, bidirectional=True),
        nn.LSTM(4, 3, batch_first=True, bias=False),
    ],
)
def test_other_lstms_are_refused_with_the_reason(lstm: nn.LSTM) -> None:
    with pytest.raises(ValueError, match="one-layer, one-way, batch-first"):
        PerExampleLSTM.of(lstm)
