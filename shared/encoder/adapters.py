"""Parameter-efficient fine-tuning that Opacus can privatise: LoRA adapters or the top layers."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedModel

from fedrec.shared.encoder.config import FineTuneConfig


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B(A(x))``: ``base`` frozen, only ``A`` and ``B`` train.

    ``B`` starts at zero, so a fresh adapter leaves the output unchanged. Both are plain
    ``nn.Linear`` layers, for which Opacus computes per-sample gradients.
    """

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)
        self.scaling = alpha / rank
        with torch.no_grad():  # nn.Linear's own init, on CPU from a seedable generator
            bound = 1 / math.sqrt(base.in_features)
            self.lora_a.weight.uniform_(-bound, bound, generator=generator)
            self.lora_b.weight.zero_()
        self.lora_a.to(base.weight.device, base.weight.dtype)
        self.lora_b.to(base.weight.device, base.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x) + self.lora_b(self.lora_a(x)) * self.scaling
        return out


def apply_fine_tuning(model: nn.Module, config: FineTuneConfig, *, seed: int = 0) -> nn.Module:
    """Freeze ``model`` except what ``config`` trains; returns it, in train mode.

    LoRA adapters replace the matching ``nn.Linear`` layers in place and are initialised from
    ``seed``, so server and clients build identical ones. Train mode matters: Opacus captures
    no activations in eval mode. Raises ``ValueError`` when nothing matches the config.
    """
    model.requires_grad_(False)
    if config.mode == "lora":
        _add_lora(model, config, torch.Generator().manual_seed(seed))
    elif config.mode == "top_layers":
        blocks = transformer_blocks(model)
        if config.top_layers > len(blocks):
            raise ValueError(
                f"top_layers={config.top_layers}, but the model has {len(blocks)} layers"
            )
        for block in blocks[len(blocks) - config.top_layers :]:
            block.requires_grad_(True)
    return model.train()


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers: the ``ModuleList`` as long as ``num_hidden_layers``."""
    depth = next(
        (m.config.num_hidden_layers for m in model.modules() if isinstance(m, PreTrainedModel)),
        None,
    )
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise ValueError(f"no list of {depth} transformer layers found in {type(model).__name__}")


def _add_lora(model: nn.Module, config: FineTuneConfig, generator: torch.Generator) -> None:
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in config.target_modules
    ]
    if any(isinstance(module, LoRALinear) for _, module in targets):
        raise ValueError("the model already has LoRA adapters")
    linear = [(name, module) for name, module in targets if isinstance(module, nn.Linear)]
    if not linear:
        available = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"no nn.Linear named {', '.join(config.target_modules)} in the model; "
            f"linear layers are named {', '.join(available)}"
        )
    for name, module in linear:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, LoRALinear(module, config.rank, config.alpha, generator))
