"""Drawing the synthetic world: object appearance, anti-aliased shapes, drifting textured backgrounds.

Everything is vectorised over frames and pixels (numpy, float32, values 0-255); there is no
loop over pixels, only over objects.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from e2etal.synthetic.motions import Canvas, Poses

SHAPES = ("ellipse", "box", "wedge")
ASPECT = (1.6, 2.6)  # length / width; never round, so turning is always visible
BACKGROUND_CORRELATION = 0.05  # texture blob size, fraction of the shorter side
BACKGROUND_DRIFT = (0.03, 0.1)  # mean drift speed, frame sides / s
SENSOR_NOISE = 2.0  # std of per-pixel noise added to every frame, 0-255


@dataclass(frozen=True)
class Look:
    """Appearance of one object; the same distribution for actors of every class and distractors."""

    shape: str
    half_length: float  # px, along the object's axis
    half_width: float  # px
    colour: tuple[float, float, float]  # RGB 0-255, the rear half
    tip_colour: tuple[float, float, float]  # RGB 0-255, the front half (shows which way it points)


def _hsv(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> tuple[float, float, float]:
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*saturation), rng.uniform(*value))
    return tuple(255.0 * c for c in rgb)


@dataclass(frozen=True)
class LookRanges:
    """The appearance distribution every object draws from (`WorldConfig` sets it)."""

    size: tuple[float, float]  # half-length, fraction of the frame's shorter side
    saturation: tuple[float, float]  # HSV saturation of both colours, 0-1
    value: tuple[float, float]  # HSV value (brightness) of both colours, 0-1


def random_look(rng: np.random.Generator, canvas: Canvas, ranges: LookRanges) -> Look:
    half_length = rng.uniform(*ranges.size) * canvas.side
    return Look(
        shape=SHAPES[rng.integers(len(SHAPES))],
        half_length=half_length,
        half_width=half_length / rng.uniform(*ASPECT),
        colour=_hsv(rng, ranges.saturation, ranges.value),
        tip_colour=_hsv(rng, ranges.saturation, ranges.value),
    )


def _signed_distance(look: Look, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance (px, negative inside) in the object's own axes (u along it)."""
    a, b = look.half_length, look.half_width
    if look.shape == "ellipse":
        return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * b
    if look.shape == "box":
        return np.maximum(np.abs(u) - a, np.abs(v) - b)
    # wedge: an isosceles triangle, base at u = -a (width 2b), apex at u = +a
    slope = b / (2 * a)
    edge = (np.abs(v) - slope * (a - u)) / math.sqrt(1 + slope * slope)
    return np.maximum(np.abs(u) - a, edge)


def draw(frames: np.ndarray, poses: Poses, look: Look, canvas: Canvas) -> None:
    """Paint one object into `frames` (float32 `[L, H, W, 3]`, one frame per pose) in place."""
    # Only the box the object can reach over these frames is evaluated.
    reach = look.half_length * float(poses.scale.max()) + 1.5
    x_lo, x_hi = max(0, math.floor(poses.x.min() - reach)), min(canvas.width, math.ceil(poses.x.max() + reach) + 1)
    y_lo, y_hi = max(0, math.floor(poses.y.min() - reach)), min(canvas.height, math.ceil(poses.y.max() + reach) + 1)
    if x_lo >= x_hi or y_lo >= y_hi:
        return
    cx = poses.x.astype(np.float32)[:, None, None]  # [L, 1, 1]
    cy = poses.y.astype(np.float32)[:, None, None]
    dx = np.arange(x_lo, x_hi, dtype=np.float32)[None, None, :] - cx  # [L, 1, w]
    dy = np.arange(y_lo, y_hi, dtype=np.float32)[None, :, None] - cy  # [L, h, 1]
    cos = np.cos(poses.angle).astype(np.float32)[:, None, None]
    sin = np.sin(poses.angle).astype(np.float32)[:, None, None]
    scale = poses.scale.astype(np.float32)[:, None, None]
    u = (dx * cos + dy * sin) / scale  # [L, h, w]
    v = (dy * cos - dx * sin) / scale
    coverage = np.clip(0.5 - _signed_distance(look, u, v) * scale, 0.0, 1.0)[..., None]  # [L, h, w, 1]
    rear = np.asarray(look.colour, dtype=np.float32)
    tip = np.asarray(look.tip_colour, dtype=np.float32)
    colour = np.where((u > 0)[..., None], tip, rear)  # [L, h, w, 3]
    region = frames[:, y_lo:y_hi, x_lo:x_hi]
    region += coverage * (colour - region)


def _periodic_noise(rng: np.random.Generator, fields: int, height: int, width: int, correlation_px: np.ndarray) -> np.ndarray:
    """`fields` unit-variance smooth noise images `[fields, height, width]` that tile seamlessly
    (white noise through a Gaussian low-pass in the Fourier domain); `correlation_px` `[fields]`."""
    fy = np.fft.fftfreq(height)[None, :, None]
    fx = np.fft.rfftfreq(width)[None, None, :]
    sigma = np.asarray(correlation_px, dtype=np.float64)[:, None, None]
    lowpass = np.exp(-2 * (math.pi * sigma) ** 2 * (fx * fx + fy * fy))
    spectrum = np.fft.rfft2(rng.standard_normal((fields, height, width))) * lowpass
    noise = np.fft.irfft2(spectrum, s=(height, width))
    noise -= noise.mean(axis=(1, 2), keepdims=True)
    return noise / (noise.std(axis=(1, 2), keepdims=True) + 1e-12)


@dataclass(frozen=True)
class BackgroundRanges:
    """The distribution of backgrounds (`WorldConfig` sets it)."""

    contrast: tuple[float, float]  # std of the texture's brightness, 0-255
    saturation: tuple[float, float]  # HSV saturation of the base colour, 0-1 (random hue)
    value: tuple[float, float]  # HSV value (brightness) of the base colour, 0-1


def background(rng: np.random.Generator, num_frames: int, fps: float, canvas: Canvas, ranges: BackgroundRanges) -> np.ndarray:
    """Textured noise drifting with a slowly varying velocity: float32 `[T, H, W, 3]`.

    Brightness blobs plus weaker colour blobs on a random base colour: a texture that
    tiles with the frame's own period, shifted by a sub-pixel offset per frame.
    """
    h, w = canvas.height, canvas.width
    correlation_px = BACKGROUND_CORRELATION * canvas.side
    base = np.asarray(_hsv(rng, ranges.saturation, ranges.value), dtype=np.float32)
    contrast = rng.uniform(*ranges.contrast)
    noise = _periodic_noise(rng, 4, h, w, np.array([1.0, 2.0, 2.0, 2.0]) * correlation_px)
    brightness, tint = noise[0, ..., None], np.moveaxis(noise[1:], 0, -1)  # [h, w, 1], [h, w, 3]
    texture = (base + contrast * (brightness + 0.4 * tint)).astype(np.float32)

    heading = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(*BACKGROUND_DRIFT) * canvas.side  # px/s
    wobble = _smooth_walk(rng, num_frames, fps, 0.5 * speed)  # [T, 2] px/s
    velocity = speed * np.array([math.cos(heading), math.sin(heading)]) + wobble
    offset = rng.uniform(0, [w, h]) + np.concatenate([np.zeros((1, 2)), np.cumsum(velocity[:-1], 0) / fps])

    # Frame t is the window at (floor offset) of the tiled texture, bilinearly shifted by
    # the offset's fractional part, which is the same for every pixel of the frame.
    whole = np.floor(offset)
    fx, fy = (offset - whole).astype(np.float32).T[:, :, None, None, None]  # [T, 1, 1, 1] each
    x0, y0 = (whole[:, 0] % w).astype(np.int64), (whole[:, 1] % h).astype(np.int64)
    tiled = np.tile(texture, (2, 2, 1))  # [2h, 2w, 3]
    windows = np.lib.stride_tricks.sliding_window_view(tiled, (h + 1, w + 1, 3))[y0, x0, 0]  # [T, h+1, w+1, 3]
    out = windows[:, :-1, :-1] * ((1 - fx) * (1 - fy))
    out += windows[:, :-1, 1:] * (fx * (1 - fy))
    out += windows[:, 1:, :-1] * ((1 - fx) * fy)
    out += windows[:, 1:, 1:] * (fx * fy)
    return out


def _smooth_walk(rng: np.random.Generator, n: int, fps: float, std: float) -> np.ndarray:
    """`[n, 2]` slowly varying values (moving average of white noise over ~2 s), std about `std`."""
    width = max(1, int(2 * fps))
    noise = rng.standard_normal((n + width - 1, 2))
    kernel = np.ones(width) / math.sqrt(width)
    return std * np.stack([np.convolve(noise[:, i], kernel, mode="valid") for i in range(2)], axis=1)


def finish(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add sensor noise and quantise: float32 `[T, H, W, 3]` -> uint8."""
    noise = rng.standard_normal(frames.shape, dtype=np.float32)
    noise *= SENSOR_NOISE
    frames += noise
    np.rint(frames, out=frames)
    np.clip(frames, 0, 255, out=frames)
    return frames.astype(np.uint8)
