"""A one-layer LSTM whose per-example gradients Opacus computes in one product over time.

Opacus' ``DPLSTM`` (what ``ModuleValidator.fix`` puts in place of ``nn.LSTM``) runs its gates'
linear layers once per time step, and its hooks build a ``(B, 4H, H)`` per-example gradient at
every step and add them up: on MovieLens' batches of 1,024 examples of 20 events, that was two
thirds of a DP-SGD step's time. Here the input projection is one ``nn.Linear`` over the whole
sequence (Opacus' own sampler sums over time inside one einsum), and the recurrence is a module
of its own whose sampler recomputes the gates and back-propagates through time once, for every
example at once, then takes each example's gradient as one batched product over time. The
gradients are the same as ``nn.LSTM``'s (``tests/test_dp_lstm.py``).

``to_per_example_lstms`` swaps these in for every ``nn.LSTM`` of a network before DP training;
``to_torch_lstms`` swaps ``nn.LSTM`` back with the trained weights, under the same names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn


def _unroll(
    projected: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden and cell states ``(B, T, H)`` and activated gates ``(B, T, 4H)`` (PyTorch's order:
    input, forget, cell, output) from input projections ``(B, T, 4H)``, starting at zero."""
    h = c = projected.new_zeros(projected.shape[0], projected.shape[2] // 4)
    hiddens, cells, activated = [], [], []
    for step in projected.unbind(dim=1):  # one gradient for all steps, not one per step
        i, f, g, o = (step + h @ weight.T + bias).chunk(4, dim=-1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c = f * c + i * g
        h = o * c.tanh()
        hiddens.append(h)
        cells.append(c)
        activated.append(torch.cat([i, f, g, o], dim=-1))
    return torch.stack(hiddens, 1), torch.stack(cells, 1), torch.stack(activated, 1)


class LSTMRecurrence(nn.Module):
    """The recurrent half of an LSTM layer: hidden states ``(B, T, H)`` from the input
    projections ``(B, T, 4H)``, from a zero state (``weight`` is ``nn.LSTM``'s ``weight_hh``)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))

    def forward(self, projected: torch.Tensor) -> torch.Tensor:
        return _unroll(projected, self.weight, self.bias)[0]


@register_grad_sampler(LSTMRecurrence)  # type: ignore[untyped-decorator]
def recurrence_grad_sample(
    layer: LSTMRecurrence, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-example gradients of ``layer``'s weight and bias, for Opacus: back-propagation
    through time over the batch, from the projections it saw and the gradient of its output."""
    with torch.no_grad():
        hidden, cell, gates = _unroll(activations[0], layer.weight, layer.bias)
        i, f, g, o = gates.chunk(4, dim=-1)
        tanh_cell = cell.tanh()
        previous_cell = torch.cat([torch.zeros_like(cell[:, :1]), cell[:, :-1]], dim=1)
        deltas = torch.empty_like(gates)
        carried_h = carried_c = torch.zeros_like(hidden[:, 0])
        for t in reversed(range(hidden.shape[1])):
            dh = backprops[:, t] + carried_h
            dc = dh * o[:, t] * (1 - tanh_cell[:, t] ** 2) + carried_c
            deltas[:, t] = torch.cat(
                [
                    dc * g[:, t] * i[:, t] * (1 - i[:, t]),
                    dc * previous_cell[:, t] * f[:, t] * (1 - f[:, t]),
                    dc * i[:, t] * (1 - g[:, t] ** 2),
                    dh * tanh_cell[:, t] * o[:, t] * (1 - o[:, t]),
                ],
                dim=-1,
            )
            carried_h = deltas[:, t] @ layer.weight
            carried_c = dc * f[:, t]
        previous_hidden = torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], dim=1)
    samples = {}
    if layer.weight.requires_grad:
        samples[layer.weight] = torch.einsum("btg,bth->bgh", deltas, previous_hidden)
    if layer.bias.requires_grad:
        samples[layer.bias] = deltas.sum(dim=1)
    return samples


#: ``nn.LSTM``'s parameter names and the ``PerExampleLSTM`` parameters they become
LSTM_NAMES = {
    "weight_ih_l0": "input.weight",
    "bias_ih_l0": "input.bias",
    "weight_hh_l0": "recurrence.weight",
    "bias_hh_l0": "recurrence.bias",
}


class PerExampleLSTM(nn.Module):
    """``nn.LSTM(input_size, hidden_size, batch_first=True)`` from a zero state, for DP-SGD:
    ``forward`` returns the hidden states and None for the final state, which training never
    reads."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input = nn.Linear(input_size, 4 * hidden_size)
        self.recurrence = LSTMRecurrence(hidden_size)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.recurrence(self.input(inputs)), None

    @classmethod
    def of(cls, lstm: nn.LSTM) -> PerExampleLSTM:
        """The same layer as ``lstm`` (one layer, batch first, with biases), same weights."""
        if (
            lstm.num_layers != 1
            or not lstm.batch_first
            or lstm.bidirectional
            or not lstm.bias
            or lstm.proj_size
        ):
            raise ValueError(
                "PerExampleLSTM replaces a one-layer, one-way, batch-first nn.LSTM with biases "
                f"and no projection, got {lstm}"
            )
        layer = cls(lstm.input_size, lstm.hidden_size)
        weights = lstm.state_dict()
        layer.load_state_dict({ours: weights[name] for name, ours in LSTM_NAMES.items()})
        return layer.to(weights["weight_ih_l0"].device)

    def to_lstm(self) -> nn.LSTM:
        """An ``nn.LSTM`` with this layer's weights."""
        lstm = nn.LSTM(self.input.in_features, self.input.out_features // 4, batch_first=True)
        weights = self.state_dict()
        lstm.load_state_dict({name: weights[ours] for name, ours in LSTM_NAMES.items()})
        return lstm.to(self.input.weight.device)


def to_per_example_lstms(module: nn.Module) -> None:
    """Replace, in place, every ``nn.LSTM`` inside ``module`` with its ``PerExampleLSTM``."""
    _replace(module, nn.LSTM, PerExampleLSTM.of)


def to_torch_lstms(module: nn.Module) -> None:
    """Replace, in place, every ``PerExampleLSTM`` inside ``module`` with its ``nn.LSTM``."""
    _replace(module, PerExampleLSTM, PerExampleLSTM.to_lstm)


def _replace(module: nn.Module, kind: type[nn.Module], convert: Callable[[Any], nn.Module]) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, kind):
            setattr(module, name, convert(child))
        else:
            _replace(child, kind, convert)
