"""The CUDA code paths: bf16 autocast in the head, the frozen pass and LoFi's encoder step.
Skipped without a CUDA device; `benchmarks/gpu_suite.py` runs them on one (`-m cuda`)."""

import pytest
import torch

from e2etal.adapters.frozen import FrozenBackbone
from e2etal.backbones import tsm_resnet18, vit_small
from e2etal.data.snippets import SnippetBatch
from e2etal.detector import LoFiDetector
from e2etal.heads import HeadConfig, build_head

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TINY_VIT = {"img_size": 32, "patch_size": 16, "num_frames": 4, "embed_dim": 64, "depth": 4, "num_heads": 4}


def small_head(input_dim: int = 64):
    return build_head(HeadConfig(input_dim=input_dim, embed_dim=64, head_dim=64, num_classes=3, num_heads=4,
                                 branch_layers=2, window_size=5, regression_ranges=((0, 4), (4, 8), (8, 10000)),
                                 max_seq_len=64))


def test_head_in_bf16_on_cuda_matches_the_cpu_in_fp32():
    torch.manual_seed(0)
    head = small_head().eval()
    x, mask = torch.randn(2, 64, 64), torch.ones(2, 64, dtype=torch.bool)
    mask[1, 40:] = False
    ref = head(x, mask)
    gpu = head.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        out = gpu(x.cuda(), mask.cuda())
    for a, b, m in zip(ref.cls_logits, out.cls_logits, ref.masks):
        torch.testing.assert_close(b.float().cpu()[m], a[m], atol=0.1, rtol=0.05)
    gpu.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = gpu.loss(gpu(x.cuda(), mask.cuda()), [torch.tensor([[5.0, 20.0]]).cuda()] * 2,
                        [torch.tensor([1]).cuda()] * 2)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is None or torch.isfinite(p.grad).all() for p in gpu.parameters())


def test_frozen_pass_in_bf16_on_cuda():
    torch.manual_seed(0)
    frozen = FrozenBackbone(vit_small(**TINY_VIT), taps=(2, 4), grid=2, micro_batch=2).cuda()
    clips = torch.rand(3, 3, 4, 32, 32)
    tapped, last = frozen(clips)  # clips stay on the host; micro-batches move
    assert tapped.device.type == "cuda" and tapped.shape == (6, 2, 4, 64) and torch.isfinite(tapped).all()
    cpu_tapped, _ = FrozenBackbone(frozen.backbone.cpu().float(), taps=(2, 4), grid=2, dtype=torch.float32)(clips)
    torch.testing.assert_close(tapped.cpu(), cpu_tapped, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("build, width", [(lambda: vit_small(**TINY_VIT), 64), (tsm_resnet18, 512)])
def test_lofi_step_on_cuda_in_bf16_reaches_the_encoder(build, width):
    torch.manual_seed(0)
    encoder = build()
    encoder.grad_checkpointing = True
    model = LoFiDetector(encoder, small_head(width), micro_batch=4).cuda().train()
    clips = torch.rand(2, 8, 3, 4, 32, 32, device="cuda")
    mask = torch.ones(2, 8, dtype=torch.bool, device="cuda")
    batch = SnippetBatch(["a", "b"], clips, mask, [torch.tensor([[1.0, 5.0]], device="cuda")] * 2,
                         [torch.tensor([0], device="cuda")] * 2, [None, None], [None, None])
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model.losses(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.encoder.parameters() if p.requires_grad)
