import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from e2etal.data.annotations import Instance, VideoAnnotation
from e2etal.data.predictions import Detections
from e2etal.plot import (
    DPI, LABEL_CLEARANCE_PX, LABEL_PAD_PX, MIN_ALPHA, WIDTH_IN, class_colors, place_labels, plot_timeline,
    score_texts, timeline_figure,
)

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


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _label_faults(fig) -> list[str]:
    """Every label that covers a bar other than its own or another label, or leaves the axes,
    measured on the rendered figure; bars and labels are paired by their gids `bar:N`/`label:N`."""
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    bars = {p.get_gid().removeprefix("bar:"): p.get_window_extent(renderer)
            for p in ax.patches if (p.get_gid() or "").startswith("bar:")}
    labels = {t.get_gid().removeprefix("label:"): (t.get_text(), t.get_window_extent(renderer)) for t in ax.texts}
    faults = []
    for n, (text, box) in labels.items():
        if not (ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1 and ax.bbox.y0 <= box.y0 and box.y1 <= ax.bbox.y1):
            faults.append(f"label {n} {text!r} leaves the axes")
        faults += [f"label {n} {text!r} on bar {m}" for m, bar in bars.items() if m != n and _overlap(box, bar)]
        faults += [f"label {n} {text!r} on label {m} {other!r}" for m, (other, obox) in labels.items()
                   if m < n and _overlap(box, obox)]
    return faults


def _crowded_case():
    """Narrow bars with bars of other classes close by: the layout by bar width alone put the
    first "run" label on the jump bar, "swim" on the two bars after it, the last "swim" (left of
    its bar, near the end of the axis) on the PlayingBasketball bar, and labels on each other."""
    gt = _gt([Instance(5.0, 6.0, "run"), Instance(6.5, 20.0, "jump"), Instance(30.0, 31.5, "swim"),
              Instance(32.0, 33.0, "PlayingBasketball"), Instance(33.3, 45.0, "run"),
              Instance(46.0, 53.3, "PlayingBasketball"), Instance(53.5, 58.0, "swim")])
    gt.duration_s = 60.0
    dets = Detections.from_records([
        ("v", 6.0, 19.0, "jump", 0.0213), ("v", 4.8, 6.1, "run", 0.0209),
        ("v", 31.8, 33.2, "PlayingBasketball", 0.0207), ("v", 33.0, 46.0, "run", 0.0181),
    ])
    return dets, gt


def _many_case(rng, n_dets, n_gt, duration_s, max_len_s, scores):
    classes = ["jump", "run", "swim", "throw", "PlayingBasketball"]
    starts = rng.uniform(0, duration_s - max_len_s, n_dets)
    dets = Detections.from_records([
        ("v", float(s), float(s + rng.uniform(0.5, max_len_s)), classes[k % 5], float(sc))
        for k, (s, sc) in enumerate(zip(starts, scores))
    ])
    gt_starts = np.sort(rng.uniform(0, duration_s - max_len_s, n_gt))
    gt = _gt([Instance(float(s), float(s + rng.uniform(0.5, max_len_s)), classes[k % 5])
              for k, s in enumerate(gt_starts)])
    gt.duration_s = duration_s
    return dets, gt, classes


def test_labels_cover_no_other_bar_nor_label():
    dets, gt = _crowded_case()
    fig = timeline_figure(dets, "v", ground_truth=gt)
    assert _label_faults(fig) == []
    labelled = {t.get_gid(): t.get_text() for t in fig.axes[0].texts}
    # The narrow first "run" bar has room on its left; every detection lane has room.
    assert labelled["label:0"] == "run"
    assert [labelled.get(f"label:{7 + r}") for r in range(4)] == ["jump", "run", "PlayingBasketball", "run"]

    rng = np.random.default_rng(0)
    twenty = _many_case(rng, 20, 12, 120.0, 15.0, rng.uniform(0.01, 0.03, 20))
    long_video = _many_case(rng, 40, 80, 3600.0, 8.0, rng.uniform(0.2, 0.9, 40))
    for dets, gt, classes in (twenty, long_video):
        for ground_truth in (gt, None):
            fig = timeline_figure(dets, "v", ground_truth=ground_truth, duration_s=gt.duration_s, classes=classes)
            assert _label_faults(fig) == []
            assert len(fig.axes[0].texts) >= 20  # labels are placed, not all left out


def test_place_labels():
    bounds = (0.0, 0.0, 1000.0, 100.0)
    size = (40.0, 10.0)
    pad, clear = LABEL_PAD_PX, LABEL_CLEARANCE_PX
    # Inside where it fits; beside (right first) where it does not.
    assert place_labels([(100, 40, 200, 60)], [size], bounds) == [("inside", 150.0, 50.0)]
    assert place_labels([(100, 40, 120, 60)], [size], bounds) == [("right", 120 + pad + 20, 50.0)]
    # Right blocked by a bar closer than the clearance: left; both blocked: none.
    right_near = 120 + pad + 40 + clear - 1
    spots = place_labels([(100, 40, 120, 60), (right_near, 40, right_near + 100, 60)], [size, size], bounds)
    assert spots == [("left", 100 - pad - 20, 50.0), ("inside", right_near + 50, 50.0)]
    left_near = 100 - pad - 40 - clear + 1
    hemmed_in = [(left_near - 30, 40, left_near, 60), (100, 40, 120, 60), (right_near, 40, right_near + 30, 60)]
    assert place_labels(hemmed_in, [size] * 3, bounds)[1] is None
    # The axes edge: a bar at the right end gets its label on its left.
    assert place_labels([(980, 40, 995, 60)], [size], bounds) == [("left", 980 - pad - 20, 50.0)]
    # A bar in another row does not block.
    assert place_labels([(100, 40, 120, 60), (130, 70, 300, 90)], [size, size], bounds)[0][0] == "right"


def test_score_texts():
    assert score_texts([0.9, 0.25, 0.25]) == ["0.90", "0.25", "0.25"]
    assert score_texts([0.0213, 0.0209, 0.0207, 0.0181]) == ["0.0213", "0.0209", "0.0207", "0.0181"]
    assert score_texts([0.021301, 0.0213]) == ["0.021301", "0.021300"]
    # The best score keeps 2 significant digits, so a weak model's lone detection does not read 0.00.
    assert score_texts([0.0043]) == ["0.0043"]
    assert score_texts([0.7]) == ["0.70"]
    assert score_texts([0.0]) == ["0.00"]
    assert score_texts([]) == []


def test_distinct_scores_read_distinct_in_rank_order():
    # A weakly trained model: every score in 0.01-0.03, two of them equal.
    scores = [0.0213, 0.02127, 0.0199, 0.02, 0.0213, 0.0105, 0.02004, 0.0298]
    dets = Detections.from_records([("v", 2.0 * k, 2.0 * k + 1.5, "jump", s) for k, s in enumerate(scores)])
    fig = timeline_figure(dets, "v", ground_truth=_gt())
    lanes = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert lanes[0] == "ground truth"
    ranks, texts = zip(*(lane.split() for lane in lanes[1:]))
    assert ranks == tuple(f"#{r}" for r in range(1, len(scores) + 1))
    shown = sorted(scores, reverse=True)
    # Equal scores read equal, distinct ones differently, and the texts fall as the scores do.
    for (a, ta), (b, tb) in zip(zip(shown, texts), zip(shown[1:], texts[1:])):
        assert (ta == tb) == (a == b) and float(ta) >= float(tb), (a, ta, b, tb)


def test_opacity_spans_the_shown_scores():
    dets = Detections.from_records([("v", 1.0, 3.0, "jump", 0.021), ("v", 4.0, 6.0, "run", 0.013),
                                    ("v", 7.0, 9.0, "run", 0.017)])
    fig = timeline_figure(dets, "v")
    alpha = {p.get_gid(): p.get_facecolor()[3] for p in fig.axes[0].patches if p.get_gid()}
    assert alpha["bar:0"] == pytest.approx(1.0)
    assert alpha["bar:1"] == pytest.approx((1.0 + MIN_ALPHA) / 2)
    assert alpha["bar:2"] == pytest.approx(MIN_ALPHA)
    one = timeline_figure(dets, "v", top_k=1)
    assert [p.get_facecolor()[3] for p in one.axes[0].patches if p.get_gid()] == [pytest.approx(1.0)]
