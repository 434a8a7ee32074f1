import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from e2etal.data.annotations import Instance, VideoAnnotation
from e2etal.data.predictions import Detections
from e2etal.plot import DPI, WIDTH_IN, class_colors, plot_timeline

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _dets():
    return Detections.from_records([
        ("v", 8.7, 15.2, "jump", 0.9),
        ("v", 2.0, 5.0, "run", 0.6),
        ("v", 16.0, 20.0, "jump", 0.3),
        ("other", 1.0, 2.0, "run", 0.99),
    ])


def _gt(instances=None):
    instances = instances or [Instance(8.86, 15.01, "jump"), Instance(1.5, 5.5, "run")]
    return VideoAnnotation("v", "test", 24.0, 30.0, instances)


def _read(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] == 4
    return img


def _colors_present(img, rgbs):
    """Which of `rgbs` appear exactly (to 8 bits) somewhere in the image."""
    rgb8 = np.round(img[..., :3].reshape(-1, 3) * 255).astype(np.int64)
    packed = np.unique(rgb8 @ np.array([1 << 16, 1 << 8, 1]))
    key = lambda rgb: sum(round(c * 255) << shift for c, shift in zip(rgb, (16, 8, 0)))
    return {rgb for rgb in rgbs if key(rgb) in packed}


def test_writes_a_valid_png(tmp_path):
    path = plot_timeline(tmp_path / "sub" / "t.png", _dets(), "v", ground_truth=_gt())
    assert path == tmp_path / "sub" / "t.png"
    img = _read(path)
    lanes = 1 + 3
    assert img.shape[1] == pytest.approx(WIDTH_IN * DPI, abs=2)
    assert img.shape[0] == pytest.approx((2 + lanes * 0.35) * DPI, abs=2)
    assert img[..., :3].std() > 0.05  # something was drawn, not a blank canvas


def test_overwrite_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "t.png"
    path.write_bytes(b"old contents")
    plot_timeline(path, _dets(), "v")
    _read(path)
    assert [p.name for p in tmp_path.iterdir()] == ["t.png"]

    # A crash half-way through saving leaves the previous PNG whole and no temp file behind.
    before = path.read_bytes()

    def crash(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(PNG_SIGNATURE)
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_timeline(path, _dets(), "v", ground_truth=_gt())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.png"]


def test_zero_detections(tmp_path):
    gt_only = _read(plot_timeline(tmp_path / "gt.png", Detections.empty(), "v", ground_truth=_gt()))
    assert _colors_present(gt_only, [c[:3] for c in class_colors(["jump", "run"]).values()]) == {
        c[:3] for c in class_colors(["jump", "run"]).values()
    }
    nothing = _read(plot_timeline(tmp_path / "none.png", Detections.empty(), "v"))
    assert nothing.shape[0] > 100
    # Detections of other videos, or all below min_score, count as none.
    _read(plot_timeline(tmp_path / "low.png", _dets(), "v", min_score=0.95))


def test_ground_truth_changes_the_plot(tmp_path):
    without = _read(plot_timeline(tmp_path / "a.png", _dets(), "v", duration_s=24.0, title="same"))
    with_gt = _read(plot_timeline(tmp_path / "b.png", _dets(), "v", duration_s=24.0, title="same", ground_truth=_gt()))
    assert without.shape != with_gt.shape or not np.array_equal(without, with_gt)
    # The ground truth lane is drawn at full opacity, so its class colours appear exactly.
    jump = class_colors(["jump", "run"])["jump"][:3]
    assert _colors_present(with_gt, [jump]) == {jump}


def test_top_k_sets_the_number_of_lanes(tmp_path):
    heights = [_read(plot_timeline(tmp_path / f"{k}.png", _dets(), "v", top_k=k)).shape[0] for k in (1, 3)]
    assert heights[1] - heights[0] == pytest.approx(2 * 0.35 * DPI, abs=2)


def test_class_colours_are_stable(tmp_path):
    classes = ["jump", "run", "swim"]
    colors = {name: c[:3] for name, c in class_colors(classes).items()}
    assert class_colors(classes) == class_colors(list(classes))
    # "run" is drawn in the left third of the image, "jump" in the middle third; the legend,
    # which shows every colour, lies in the right third.
    run_first = _gt([Instance(1.0, 5.0, "run"), Instance(12.0, 16.0, "jump")])
    jump_first = _gt([Instance(12.0, 16.0, "jump"), Instance(1.0, 5.0, "run")])
    dets = Detections.from_records([("v", 2.0, 4.0, "run", 0.5), ("v", 18.0, 20.0, "jump", 0.4)])
    calls = [
        dict(ground_truth=jump_first, classes=classes),
        dict(ground_truth=run_first, classes=classes, detections=dets),
        # Without a class list, colours follow the sorted labels, whatever order they come in.
        dict(ground_truth=run_first, detections=dets),
    ]
    for n, kwargs in enumerate(calls):
        kwargs.setdefault("detections", Detections.empty())
        img = _read(plot_timeline(tmp_path / f"{n}.png", video_id="v", **kwargs))
        third = img.shape[1] // 3
        left, middle = img[:, :third], img[:, third : 2 * third]
        assert _colors_present(left, colors.values()) == {colors["run"]}, n
        assert _colors_present(middle, colors.values()) == {colors["jump"]}, n
        assert colors["swim"] not in _colors_present(img, colors.values())


def test_label_outside_the_class_list_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"video 'v'.*\['run'\]"):
        plot_timeline(tmp_path / "t.png", _dets(), "v", classes=["jump"])
    assert not (tmp_path / "t.png").exists()


def test_does_not_import_pyplot(tmp_path):
    # In a fresh interpreter: plotting must not import pyplot, which owns the global backend
    # and figure manager. (Asking for the backend would itself import pyplot, so we do not.)
    code = (
        "import sys; "
        "from e2etal.data.predictions import Detections; from e2etal.plot import plot_timeline; "
        f"plot_timeline({str(tmp_path / 't.png')!r}, Detections.empty(), 'v'); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
