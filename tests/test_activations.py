"""The activations shared by the backbones and the head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from e2etal.activations import InplaceGELU
from e2etal.backbones.vit import Mlp, vit_tiny


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_inplace_gelu_overwrites_only_where_autograd_does_not_need_its_input(approximate):
    gelu = InplaceGELU(approximate=approximate)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    want = F.gelu(x, approximate=approximate)
    with torch.no_grad():
        inference = x.clone()
        assert gelu(inference).data_ptr() == inference.data_ptr()
    assert torch.equal(inference, want)
    plain = x.clone()  # no gradient wanted: nothing to keep
    assert gelu(plain).data_ptr() == plain.data_ptr() and torch.equal(plain, want)
    leaf = x.clone().requires_grad_()
    out = gelu(leaf)
    assert torch.equal(out, want) and torch.equal(leaf, x)
    out.sum().backward()
    reference = x.clone().requires_grad_()
    F.gelu(reference, approximate=approximate).sum().backward()
    assert torch.equal(leaf.grad, reference.grad)


def test_vit_features_are_the_same_with_the_gelu_in_place():
    torch.manual_seed(0)
    model = vit_tiny().eval()
    assert all(isinstance(m.act, InplaceGELU) for m in model.modules() if isinstance(m, Mlp))
    x = torch.randn(1, 3, 16, 32, 32)
    with torch.inference_mode():
        tokens, taps = model(x, taps=(1, 2))
    for m in model.modules():
        if isinstance(m, Mlp):
            m.act = nn.GELU()
    with torch.inference_mode():
        want_tokens, want_taps = model(x, taps=(1, 2))
    assert torch.equal(tokens, want_tokens)
    assert all(torch.equal(taps[layer], want_taps[layer]) for layer in (1, 2))
