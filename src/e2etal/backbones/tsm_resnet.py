"""TSM-ResNet18/50: a 2-D ResNet with the Temporal Shift Module, the LoFi encoder.

Each residual block shifts 1/8 of its input channels one frame back in time and another
1/8 one frame forward, inside the residual branch just before `conv1` ("residual shift"
of Lin et al., ICCV 2019); the identity path is not shifted. Ends are zero-padded.

For LoSA the four stages (`layer1..layer4`) are the tappable layers, numbered 1..4
(`forward_taps`); a TSM-ResNet has one temporal position per frame.

Parameter names are torchvision's ResNet names (`conv1`, `bn1`, `layer1.0.conv1`, ...,
`layer2.0.downsample.0/1`, `fc`), so torchvision ImageNet and Kinetics ResNet state dicts
load without renaming (see `e2etal.backbones.checkpoint` for other layouts). The shift
has no parameters, so it does not change the names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from e2etal.backbones.layout import IMAGENET_MEAN, IMAGENET_STD, TapLayout

__all__ = [
    "DEFAULT_TAPS",
    "BasicBlock",
    "Bottleneck",
    "TSMResNet",
    "temporal_shift",
    "tsm_resnet18",
    "tsm_resnet50",
]

# Stages LoSA reads by default: 2, 3 and 4 (the last). Stage 1 is left out: it is the
# widest map (1/4 resolution) and its features are low-level edges and colours.
DEFAULT_TAPS = (2, 3, 4)


def temporal_shift(x: Tensor, num_segments: int, shift_div: int = 8) -> Tensor:
    """Shift channels along time: `[B*T, C, H, W] -> [B*T, C, H, W]`.

    With `fold = C // shift_div`: channels `[0, fold)` of frame t take the values of
    frame t+1 (zero at the last frame); channels `[fold, 2*fold)` take frame t-1 (zero
    at the first frame); the remaining channels are unchanged.
    """
    nt, c, h, w = x.shape
    if nt % num_segments:
        raise ValueError(f"batch of {nt} frames is not a multiple of num_segments={num_segments}")
    x = x.view(nt // num_segments, num_segments, c, h, w)  # [B, T, C, H, W]
    fold = c // shift_div
    from_next = x[:, 1:, :fold]  # frames 1..T-1 -> positions 0..T-2
    from_prev = x[:, :-1, fold : 2 * fold]  # frames 0..T-2 -> positions 1..T-1
    pad = x.new_zeros(x.shape[0], 1, fold, h, w)
    out = torch.cat(
        (
            torch.cat((from_next, pad), dim=1),
            torch.cat((pad, from_prev), dim=1),
            x[:, :, 2 * fold :],
        ),
        dim=2,
    )  # [B, T, C, H, W]
    return out.view(nt, c, h, w)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, shift_div: int = 8
    ):
        super().__init__()
        self.shift_div = shift_div
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor, num_segments: int) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # [B*T, C', H', W']
        out = temporal_shift(x, num_segments, self.shift_div)
        out = self.relu(self.bn1(self.conv1(out)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 `conv2`."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, shift_div: int = 8
    ):
        super().__init__()
        self.shift_div = shift_div
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor, num_segments: int) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = temporal_shift(x, num_segments, self.shift_div)
        out = self.relu(self.bn1(self.conv1(out)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@contextlib.contextmanager
def _bn_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Recompute a checkpointed block without updating BatchNorm running statistics twice.

    With momentum 0 the running-stat update is a no-op; batch statistics are still used,
    so the recomputed activations equal the original ones.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum


class TSMResNet(nn.Module):
    """ResNet trunk with temporal shift; per-frame global-average-pooled features.

    forward: `[B, 3, T, H, W] -> [B, T, C]` (C = 512 for R18, 2048 for R50); the shift
    uses T of the input as `num_segments`. `fc` exists only when `num_classes > 0`.
    `stage_widths` are the channels of stages 1..4: (64, 128, 256, 512) for R18,
    (256, 512, 1024, 2048) for R50.
    """

    # Torchvision's ImageNet weights and the TSM release are trained on ImageNet-normalised RGB.
    pixel_mean: tuple[float, float, float] | None = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] | None = IMAGENET_STD

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        *,
        num_classes: int = 0,
        shift_div: int = 8,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.shift_div = shift_div
        self.grad_checkpointing = grad_checkpointing
        self.frozen_layers = 0  # `freeze_layers`
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.stage_widths = tuple(planes * block.expansion for planes in (64, 128, 256, 512))
        self.num_features = self.stage_widths[-1]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.ModuleList:
        # A ModuleList, not a Sequential: blocks take `num_segments` too. Names are the same.
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layer = [block(self.inplanes, planes, stride, downsample, self.shift_div)]
        self.inplanes = planes * block.expansion
        layer += [block(self.inplanes, planes, shift_div=self.shift_div) for _ in range(1, blocks)]
        return nn.ModuleList(layer)

    def _run_block(self, block: nn.Module, x: Tensor, num_segments: int) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(
                block,
                x,
                num_segments,
                use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(), _bn_stats_frozen(block)),
            )
        return block(x, num_segments)

    def _trunk(
        self, x: Tensor, taps: Sequence[int], tap_fn: Callable[[Tensor], Tensor] | None
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """`[B, 3, T, H, W]` -> the last stage's maps `[B*T, C, h, w]` and the taps of `forward_taps`."""
        tap_set = set(taps)
        bad = sorted(stage for stage in tap_set if not 1 <= stage <= 4)
        if bad:
            raise ValueError(f"tap stages {bad} out of range; expected 1-based stage numbers in 1..4")
        B, C, T, H, W = x.shape  # [B, 3, T, H, W]
        grad = torch.is_grad_enabled()
        x = x.transpose(1, 2).reshape(B * T, C, H, W)  # [B*T, 3, H, W]
        with torch.set_grad_enabled(grad and self.frozen_layers == 0):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        tapped: dict[int, Tensor] = {}
        for stage, layer in enumerate(self.stages, start=1):
            with torch.set_grad_enabled(grad and stage > self.frozen_layers):
                for block in layer:
                    x = self._run_block(block, x, T)
            if stage in tap_set:
                tokens = _as_tokens(x, B, T)
                tapped[stage] = tap_fn(tokens) if tap_fn is not None else tokens
        return x, tapped

    def forward(self, x: Tensor) -> Tensor:
        B, _, T = x.shape[:3]  # [B, 3, T, H, W]
        maps, _ = self._trunk(x, (), None)  # [B*T, C, h, w]
        return self.avgpool(maps).flatten(1).view(B, T, self.num_features)  # [B, T, C]

    def forward_taps(
        self, x: Tensor, taps: Sequence[int] = (), tap_fn: Callable[[Tensor], Tensor] | None = None
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """The tapped forward every backbone has (`e2etal.backbones.layout`).

        x: `[B, 3, T, H, W]`. Returns the last stage's maps as tokens `[B, T, h, w, C]`
        (one temporal position per frame) and `{stage: tapped}` for each 1-based stage in
        `taps` (`layer1` .. `layer4`), where `tapped` is `tap_fn(tokens [B, T, h_s, w_s,
        C_s])` (the tokens themselves without `tap_fn`). `tap_fn` runs as soon as the stage
        is computed, so a pooled tap does not keep the full map alive. Tokens are a
        channels-last view of the maps, not a copy.
        """
        B, _, T = x.shape[:3]
        maps, tapped = self._trunk(x, taps, tap_fn)
        return _as_tokens(maps, B, T), tapped

    @property
    def stages(self) -> tuple[nn.ModuleList, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def shard_units(self) -> list[nn.Module]:
        """The bottleneck blocks, each called through its own forward (a stage never is)."""
        return [block for stage in self.stages for block in stage]

    def tap_layout(self) -> TapLayout:
        return TapLayout(widths=self.stage_widths, frames_per_position=1, default_taps=DEFAULT_TAPS, unit="stage")

    def freeze_layers(self, count: int) -> None:
        """Leave only the stages after the first `count` trainable: the stem and stages
        1..count take no gradient, run under no_grad (nothing of them is kept for
        backward) and in eval mode (BatchNorm on its running statistics). 0 trains
        everything."""
        if not 0 <= count <= 4:
            raise ValueError(f"freeze_layers: expected 0..4 stages, got {count}")
        self.frozen_layers = count
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, *self.stages[: self.frozen_layers]] if self.frozen_layers else []

    def train(self, mode: bool = True) -> TSMResNet:
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def clip_features(self, x: Tensor) -> Tensor:
        """One feature per clip `[B, C]`: the per-frame pooled features averaged over the clip."""
        return self.forward(x).mean(dim=1)

    def classify(self, x: Tensor) -> Tensor:
        """Clip logits `[B, num_classes]`: `fc` on per-frame features averaged over time (TSN consensus)."""
        if self.fc is None:
            raise ValueError("this TSMResNet has no fc (built with num_classes=0)")
        return self.fc(self.clip_features(x))


def _as_tokens(maps: Tensor, batch: int, frames: int) -> Tensor:
    """Per-frame maps `[B*T, C, h, w]` as a token view `[B, T, h, w, C]`."""
    _, c, h, w = maps.shape
    return maps.view(batch, frames, c, h, w).permute(0, 1, 3, 4, 2)


def tsm_resnet18(**kwargs) -> TSMResNet:
    return TSMResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def tsm_resnet50(**kwargs) -> TSMResNet:
    return TSMResNet(Bottleneck, (3, 4, 6, 3), **kwargs)
