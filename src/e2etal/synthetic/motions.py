"""How objects move: the non-action random walk and the action classes of the synthetic world.

Every action class is defined by motion over time only. All motions act on objects drawn
from one appearance distribution (`raster.random_look`), and every action instance moves
exactly two objects ("actors"): in the one-object classes the second actor is a bystander
on a random walk, so the number of objects in view never tells the class either.

Objects stay in view: random walks bounce off a margin inside the frame's edges, and the
straight motions are slowed down where needed so that their whole path fits the frame.
Speeds, distances and sizes are fractions of the frame's shorter side (per second), so a
world looks the same at any resolution. Image coordinates: x to the right, y down; an
increasing angle turns from +x towards +y, which is clockwise on screen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MARGIN = 0.1  # object centres stay this far inside the frame's edges, fraction of the shorter side
# Random walk (distractors, bystanders, idle actors): exponentially smoothed noise velocities.
WALK_SPEED = 0.03  # std of each velocity component, frame sides / s; a glide is >= 0.2 sides / s
WALK_TIME_S = 1.0  # velocity correlation time
WALK_SPIN_DEG_S = 25.0  # std of the angular velocity
WALK_SPIN_TIME_S = 1.5


@dataclass(frozen=True)
class Canvas:
    """The frame, and the box `[margin, width - margin] x [margin, height - margin]` that
    object centres stay in."""

    height: int
    width: int

    @property
    def side(self) -> float:
        return float(min(self.height, self.width))

    @property
    def margin(self) -> float:
        return MARGIN * self.side

    def random_point(self, rng: np.random.Generator) -> tuple[float, float]:
        m = self.margin
        return float(rng.uniform(m, self.width - m)), float(rng.uniform(m, self.height - m))

    def fold(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reflect unbounded paths into the box: an object bounces off its walls."""
        return _fold(x, self.margin, self.width - self.margin), _fold(y, self.margin, self.height - self.margin)


def _fold(value: np.ndarray, low: float, high: float) -> np.ndarray:
    span = high - low
    return high - np.abs((value - low) % (2 * span) - span)


@dataclass
class Poses:
    """Pose of one object on consecutive frames; all arrays `[L]`."""

    x: np.ndarray  # px, centre
    y: np.ndarray
    angle: np.ndarray  # radians
    scale: np.ndarray  # multiplies the object's size

    def __len__(self) -> int:
        return len(self.x)

    @classmethod
    def concat(cls, parts: list[Poses]) -> Poses:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("x", "y", "angle", "scale")))

    def reversed(self) -> Poses:
        return Poses(self.x[::-1].copy(), self.y[::-1].copy(), self.angle[::-1].copy(), self.scale[::-1].copy())

    def slice(self, start: int, stop: int) -> Poses:
        return Poses(self.x[start:stop], self.y[start:stop], self.angle[start:stop], self.scale[start:stop])


def smooth_noise(rng: np.random.Generator, n: int, fps: float, std: float, time_s: float, dims: int = 1) -> np.ndarray:
    """`[n, dims]` stationary noise with correlation time `time_s` and std `std`: white noise
    through a causal exponential filter (a discretised Ornstein-Uhlenbeck process)."""
    taps = max(1, math.ceil(5 * time_s * fps))
    kernel = np.exp(-np.arange(taps) / (time_s * fps))
    kernel *= std / np.sqrt(np.sum(kernel * kernel))
    noise = rng.standard_normal((n + taps - 1, dims))
    return np.stack([np.convolve(noise[:, i], kernel, mode="valid") for i in range(dims)], axis=1)


def random_walk(
    rng: np.random.Generator,
    n: int,
    fps: float,
    canvas: Canvas,
    start: tuple[float, float] | None = None,
    angle: float | None = None,
) -> Poses:
    """Idle motion: smooth random velocity, bouncing off the margin box, slow random turning,
    constant size. Frame 0 is at `start` with orientation `angle` (random when not given)."""
    x0, y0 = canvas.random_point(rng) if start is None else start
    a0 = rng.uniform(0, 2 * math.pi) if angle is None else angle
    velocity = smooth_noise(rng, n, fps, WALK_SPEED * canvas.side, WALK_TIME_S, dims=2)  # [n, 2] px/s
    spin = smooth_noise(rng, n, fps, math.radians(WALK_SPIN_DEG_S), WALK_SPIN_TIME_S)[:, 0]  # [n] rad/s
    steps = np.concatenate([np.zeros((1, 2)), np.cumsum(velocity[:-1], axis=0) / fps])  # [n, 2] px
    turns = np.concatenate([[0.0], np.cumsum(spin[:-1]) / fps])
    x, y = canvas.fold(x0 + steps[:, 0], y0 + steps[:, 1])
    return Poses(x, y, a0 + turns, np.ones(n))


def walk_into(rng: np.random.Generator, poses: Poses, before: int, after: int, fps: float, canvas: Canvas) -> Poses:
    """`poses` extended by `before` and `after` frames of random walk that join it continuously.

    The part before is a walk started at the first pose and played backwards, so the
    object wanders in from anywhere and nothing at the join tells where the action begins.
    """
    parts = []
    if before:
        back = random_walk(rng, before + 1, fps, canvas, (poses.x[0], poses.y[0]), poses.angle[0])
        parts.append(back.slice(1, before + 1).reversed())
        parts[-1].scale = np.full(before, poses.scale[0])
    parts.append(poses)
    if after:
        forth = random_walk(rng, after + 1, fps, canvas, (poses.x[-1], poses.y[-1]), poses.angle[-1])
        parts.append(forth.slice(1, after + 1))
        parts[-1].scale = np.full(after, poses.scale[-1])
    return Poses.concat(parts)


def _whole_cycles(rng: np.random.Generator, low_hz: float, high_hz: float, n: int, fps: float, per_cycle: int) -> float:
    """A frequency near U(low, high) Hz with a whole number of `1/per_cycle` cycles in `n` frames,
    so the motion ends where it started (size back to 1, object back on the ground)."""
    duration_s = n / fps
    target = rng.uniform(low_hz, high_hz) * duration_s * per_cycle
    count = max(1, round(target))
    while count > 1 and count / (duration_s * per_cycle) > high_hz * 1.2:
        count -= 1
    return count / (duration_s * per_cycle)


def _straight_run(rng: np.random.Generator, speed: float, n: int, fps: float, low: float, high: float) -> tuple[float, float]:
    """Start and signed speed (px/s) of a run along one axis that stays in `[low, high]`:
    `speed` is reduced when the run would not fit."""
    duration_s = max(n - 1, 1) / fps
    speed = math.copysign(min(abs(speed), (high - low) / duration_s), speed)
    path = abs(speed) * duration_s
    room = rng.uniform(0.0, max(0.0, high - low - path))
    return (high - room if speed < 0 else low + room), speed


# ---------------------------------------------------------------------------------------
# Action classes. Each returns the poses of its two actors over the `n` frames of one
# instance, continuing from nothing in particular (the caller adds the idle walk around).

def _bystander(rng, n, fps, canvas) -> Poses:
    return random_walk(rng, n, fps, canvas)


def _slide(dx: int, dy: int) -> Callable:
    """A straight glide along x (`dx` = -1 or +1) or y (`dy`), at constant speed."""

    def motion(rng: np.random.Generator, n: int, fps: float, canvas: Canvas) -> list[Poses]:
        m = canvas.margin
        length = canvas.width if dx else canvas.height
        start, speed = _straight_run(rng, (dx or dy) * rng.uniform(0.3, 0.55) * canvas.side, n, fps, m, length - m)
        actor = random_walk(rng, n, fps, canvas)
        path = start + speed * np.arange(n) / fps
        if dx:
            actor.x, actor.y = path, np.full(n, actor.y[0])
        else:
            actor.x, actor.y = np.full(n, actor.x[0]), path
        return [actor, _bystander(rng, n, fps, canvas)]

    return motion


def _pulse(low_hz: float, high_hz: float) -> Callable:
    def motion(rng: np.random.Generator, n: int, fps: float, canvas: Canvas) -> list[Poses]:
        # The fastest rhythm keeps >= 3.5 frames per period, so it is not aliased at low fps.
        top_hz = min(high_hz, fps / 3.5)
        freq_hz = _whole_cycles(rng, min(low_hz, top_hz), top_hz, n, fps, per_cycle=2)
        amplitude = rng.uniform(0.3, 0.45) * rng.choice([-1.0, 1.0])
        actor = random_walk(rng, n, fps, canvas)
        actor.scale = 1.0 + amplitude * np.sin(2 * math.pi * freq_hz * np.arange(n) / fps)
        return [actor, _bystander(rng, n, fps, canvas)]

    return motion


def _approach_or_separate(approach: bool) -> Callable:
    def motion(rng: np.random.Generator, n: int, fps: float, canvas: Canvas) -> list[Poses]:
        far = rng.uniform(0.45, 0.7) * canvas.side
        near = rng.uniform(0.12, 0.2) * canvas.side
        axis = rng.uniform(0, math.pi)
        reach_x, reach_y = far / 2 * abs(math.cos(axis)), far / 2 * abs(math.sin(axis))
        m = canvas.margin
        cx = rng.uniform(m + reach_x, canvas.width - m - reach_x)
        cy = rng.uniform(m + reach_y, canvas.height - m - reach_y)
        u = np.arange(n) / max(n - 1, 1)
        distance = far + (near - far) * u if approach else near + (far - near) * u  # [n] px
        actors = []
        for side in (-1.0, 1.0):
            actor = random_walk(rng, n, fps, canvas)
            actor.x = cx + side * distance / 2 * math.cos(axis)
            actor.y = cy + side * distance / 2 * math.sin(axis)
            actors.append(actor)
        return actors

    return motion


def _spin(direction: float) -> Callable:
    def motion(rng: np.random.Generator, n: int, fps: float, canvas: Canvas) -> list[Poses]:
        rate = math.radians(rng.uniform(120, 220))  # rad/s; < 90 degrees per frame from 3 fps up
        actor = random_walk(rng, n, fps, canvas)
        actor.angle = actor.angle[0] + direction * rate * np.arange(n) / fps
        return [actor, _bystander(rng, n, fps, canvas)]

    return motion


def _hop(rng: np.random.Generator, n: int, fps: float, canvas: Canvas) -> list[Poses]:
    m = canvas.margin
    x0, speed = _straight_run(
        rng, rng.uniform(0.1, 0.25) * canvas.side * rng.choice([-1.0, 1.0]), n, fps, m, canvas.width - m
    )
    height = rng.uniform(0.12, 0.2) * canvas.side
    ground = rng.uniform(m + height, canvas.height - m)
    freq_hz = _whole_cycles(rng, 0.9, 1.5, n, fps, per_cycle=1)
    t_s = np.arange(n) / fps
    actor = random_walk(rng, n, fps, canvas)
    actor.x = x0 + speed * t_s
    actor.y = ground - height * np.abs(np.sin(math.pi * freq_hz * t_s))
    return [actor, _bystander(rng, n, fps, canvas)]


@dataclass(frozen=True)
class ActionClass:
    name: str
    description: str
    motion: Callable[[np.random.Generator, int, float, Canvas], list[Poses]]
    mirror: str | None = None  # the class of a left-right mirrored instance; None = this class


# The order is the `label_id`; a world with K classes uses the first K.
ACTION_CLASSES: tuple[ActionClass, ...] = (
    ActionClass("move_left", "glides leftwards in a straight line at constant speed", _slide(-1, 0), "move_right"),
    ActionClass("move_right", "glides rightwards in a straight line at constant speed", _slide(1, 0), "move_left"),
    ActionClass("move_up", "glides upwards in a straight line at constant speed", _slide(0, -1)),
    ActionClass("move_down", "glides downwards in a straight line at constant speed", _slide(0, 1)),
    ActionClass("pulse_slow", "grows and shrinks in place, 0.4-0.7 Hz", _pulse(0.4, 0.7)),
    ActionClass("pulse_fast", "grows and shrinks in place, 1.6-2.2 Hz", _pulse(1.6, 2.2)),
    ActionClass("approach", "two objects move towards each other until they nearly touch", _approach_or_separate(True)),
    ActionClass("separate", "two nearly touching objects move apart", _approach_or_separate(False)),
    ActionClass("spin_clockwise", "turns clockwise at 120-220 degrees/s", _spin(1.0), "spin_counterclockwise"),
    ActionClass("spin_counterclockwise", "turns counter-clockwise at 120-220 degrees/s", _spin(-1.0), "spin_clockwise"),
    ActionClass("hop", "bounces up and down (0.9-1.5 hops/s) while drifting sideways", _hop),
)

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in ACTION_CLASSES)


def mirror_label_ids(num_classes: int) -> list[int]:
    """For each of the first `num_classes` classes, the `label_id` that a left-right mirrored
    instance of it belongs to (itself for symmetric motions), or -1 when that class is not
    among the first `num_classes`: a flip augmentation must relabel or skip such clips."""
    names = CLASS_NAMES[:num_classes]
    mirrored = [c.mirror or c.name for c in ACTION_CLASSES[:num_classes]]
    return [names.index(m) if m in names else -1 for m in mirrored]
