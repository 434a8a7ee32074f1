"""TSM-ResNet: the temporal shift by hand, torchvision key names, shapes, checkpointing."""

import copy

import pytest
import torch

from e2etal.backbones import TSMResNet, load_backbone_checkpoint, temporal_shift, tsm_resnet18, tsm_resnet50
from e2etal.backbones.tsm_resnet import BasicBlock


def test_temporal_shift_by_hand():
    B, T, C, H, W = 2, 4, 16, 2, 3  # fold = 16 // 8 = 2
    value = torch.arange(B * T * C, dtype=torch.float32).view(B * T, C, 1, 1).expand(B * T, C, H, W)
    out = temporal_shift(value.contiguous(), num_segments=T).view(B, T, C, H, W)
    src = value.view(B, T, C, H, W)
    for b in range(B):
        for t in range(T):
            for c in range(C):
                if c < 2:  # from the next frame, zero after the last
                    expect = src[b, t + 1, c] if t + 1 < T else torch.zeros(H, W)
                elif c < 4:  # from the previous frame, zero before the first
                    expect = src[b, t - 1, c] if t > 0 else torch.zeros(H, W)
                else:
                    expect = src[b, t, c]
                assert torch.equal(out[b, t, c], expect), (b, t, c)
    with pytest.raises(ValueError, match="num_segments"):
        temporal_shift(value.contiguous(), num_segments=3)


def torchvision_resnet_keys(blocks: tuple[int, ...], bottleneck: bool) -> set[str]:
    """torchvision ResNet state-dict names, written from the architecture."""

    def bn(prefix):
        return {prefix + s for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}

    keys = {"conv1.weight", "fc.weight", "fc.bias"} | bn("bn1.")
    for stage, n in enumerate(blocks, start=1):
        for i in range(n):
            p = f"layer{stage}.{i}."
            for j in (1, 2, 3) if bottleneck else (1, 2):
                keys |= {f"{p}conv{j}.weight"} | bn(f"{p}bn{j}.")
            if i == 0 and (stage > 1 or bottleneck):
                keys |= {p + "downsample.0.weight"} | bn(p + "downsample.1.")
    return keys


@pytest.mark.parametrize("ctor,blocks,bottleneck", [(tsm_resnet18, (2, 2, 2, 2), False),
                                                     (tsm_resnet50, (3, 4, 6, 3), True)])
def test_torchvision_key_names(ctor, blocks, bottleneck):
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ctor(num_classes=1000).state_dict().items()}
    assert set(shapes) == torchvision_resnet_keys(blocks, bottleneck)
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["fc.weight"] == ((1000, 2048) if bottleneck else (1000, 512))
    assert shapes["layer1.0.conv1.weight"] == ((64, 64, 1, 1) if bottleneck else (64, 64, 3, 3))
    assert shapes["layer4.0.downsample.0.weight"] == ((2048, 1024, 1, 1) if bottleneck else (512, 256, 1, 1))


def test_torchvision_state_dict_loads_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, v in tsm_resnet18(num_classes=1000).state_dict().items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.randint(0, 9, v.shape, generator=g)
        else:
            state[k] = torch.randn(v.shape, generator=g)
    assert set(state) == torchvision_resnet_keys((2, 2, 2, 2), bottleneck=False)
    path = tmp_path / "resnet.pth"
    torch.save(state, path)

    model = tsm_resnet18()  # no fc: the file's fc is dropped
    load_backbone_checkpoint(model, path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    load_backbone_checkpoint(model := tsm_resnet18(num_classes=1000), path)
    assert torch.equal(model.fc.weight, state["fc.weight"])

    # older torchvision files have no num_batches_tracked
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    load_backbone_checkpoint(tsm_resnet18(), path)

    broken = dict(state)
    del broken["layer2.0.downsample.0.weight"]
    torch.save(broken, path)
    with pytest.raises(ValueError, match="resnet.pth.*layer2.0.downsample.0.weight"):
        load_backbone_checkpoint(tsm_resnet18(), path)


def test_official_tsm_layout(tmp_path):
    donor = tsm_resnet18(num_classes=7)
    state = {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in donor.state_dict().items()}

    def tsm_name(k):
        if k.startswith("fc."):
            return "module.new_fc." + k[3:]
        return "module.base_model." + (k.replace(".conv1.", ".conv1.net.") if k.startswith("layer") else k)

    path = tmp_path / "TSM_kinetics.pth"
    torch.save({"epoch": 50, "arch": "resnet18", "state_dict": {tsm_name(k): v for k, v in state.items()}}, path)
    model = tsm_resnet18(num_classes=7)
    load_backbone_checkpoint(model, path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_output_shapes_and_no_batch_mixing():
    r18 = tsm_resnet18().eval()
    x = torch.randn(2, 3, 2, 32, 32)
    with torch.no_grad():
        y = r18(x)
        x2 = x.clone()
        x2[0] += 1.0
        y2 = r18(x2)
    assert y.shape == (2, 2, 512)
    assert torch.equal(y[1], y2[1]) and not torch.equal(y[0], y2[0])
    with torch.no_grad():
        assert tsm_resnet50().eval()(torch.randn(1, 3, 2, 32, 32)).shape == (1, 2, 2048)
    assert tsm_resnet18(num_classes=3).eval().classify(x).shape == (2, 3)


def test_grad_checkpointing_matches_and_updates_bn_once():
    torch.manual_seed(0)
    plain = TSMResNet(BasicBlock, (1, 1, 1, 1)).train()  # a small trunk keeps the test fast
    ckpt = copy.deepcopy(plain)
    ckpt.grad_checkpointing = True
    x = torch.randn(1, 3, 4, 32, 32)
    outs = []
    for model in (plain, ckpt):
        y = model(x)
        y.square().mean().backward()
        outs.append(y)
    torch.testing.assert_close(outs[0], outs[1])
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
    for name, buf in plain.named_buffers():
        if "running" in name:
            torch.testing.assert_close(buf, dict(ckpt.named_buffers())[name], msg=name)


def test_tapped_forward_gives_each_stage_as_tokens_as_soon_as_it_is_done():
    torch.manual_seed(0)
    model = tsm_resnet18().eval()
    x = torch.randn(2, 3, 4, 64, 64)  # [B, 3, T, H, W]
    events, stage_maps = [], {}
    for stage in (1, 2, 3, 4):
        def hook(module, args, out, stage=stage):
            events.append(("stage", stage))
            stage_maps[stage] = out  # [B*T, C, h, w]
        getattr(model, f"layer{stage}")[-1].register_forward_hook(hook)

    def tap_fn(tokens):
        events.append(("tap", tokens.shape[-1]))
        return tokens.clone()

    with torch.no_grad():
        tokens, tapped = model.forward_taps(x, taps=(3, 1, 4), tap_fn=tap_fn)
        assert events == [("stage", 1), ("tap", 64), ("stage", 2), ("stage", 3), ("tap", 256), ("stage", 4),
                          ("tap", 512)]
        plain = model(x)
    assert tokens.shape == (2, 4, 2, 2, 512)  # one temporal position per frame
    torch.testing.assert_close(tokens.mean(dim=(2, 3)), plain)  # the plain forward's features
    assert model.stage_widths == (64, 128, 256, 512) and tsm_resnet50().stage_widths == (256, 512, 1024, 2048)
    for stage, width, side in ((1, 64, 16), (3, 256, 4), (4, 512, 2)):
        expect = stage_maps[stage].view(2, 4, width, side, side).permute(0, 1, 3, 4, 2)  # [B, T, h, w, C]
        assert torch.equal(tapped[stage], expect), stage
    with pytest.raises(ValueError, match=r"tap stages \[0, 5\] out of range"):
        model.forward_taps(x, taps=(0, 5))
