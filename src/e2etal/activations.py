"""Activations shared by the backbones and the head."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class InplaceGELU(nn.GELU):
    """nn.GELU that overwrites its input where autograd does not need it (inference and
    no-grad code, a frozen backbone): an MLP's hidden tensor is a transformer block's
    largest, and a fresh one for the output costs its memory at the peak and, on CPU, page
    faults on top of its pass. With gradients it is nn.GELU. The values are the same."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        return torch.ops.aten.gelu_(x, approximate=self.approximate)
