import json

import numpy as np
import pytest

from e2etal.data.annotations import Annotations, ClassMap, Instance, VideoAnnotation
from e2etal.data.predictions import Detections, load_predictions
from e2etal.metrics import (
    evaluate_detections,
    evaluate_files,
    interpolated_ap,
    parse_tiou,
    segment_tiou,
)
from reference_anet import reference_map


def make_gt(rows, classes=None):
    """rows: (video, start, end, label)."""
    videos = {}
    for vid, s, e, lbl in rows:
        videos.setdefault(vid, VideoAnnotation(vid, "val", 1000.0, None)).instances.append(Instance(s, e, lbl))
    names = classes or sorted({r[3] for r in rows})
    return Annotations("gt", videos, ClassMap(tuple(names)))


def ap_of(gt_rows, det_rows, thr=(0.5,), classes=None):
    result = evaluate_detections(make_gt(gt_rows, classes), Detections.from_records(det_rows), thr, keep_duplicates=True)
    return result


def test_segment_tiou():
    t = segment_tiou(np.array([[0.0, 10.0], [5.0, 15.0]]), np.array([[0.0, 10.0], [20.0, 30.0], [0.0, 5.0]]))
    np.testing.assert_allclose(t, [[1.0, 0.0, 0.5], [1 / 3, 0.0, 0.0]])
    assert segment_tiou(np.array([[3.0, 3.0]]), np.array([[4.0, 4.0]]))[0, 0] == np.inf


def test_interpolated_ap_hand_computed():
    assert interpolated_ap(np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert interpolated_ap(np.array([0.0]), np.array([0.0])) == 0.0


def test_second_detection_of_one_instance_is_false_positive():
    r = ap_of([("v", 0, 10, "a")], [("v", 0, 10, "a", 0.9), ("v", 0, 10, "a", 0.8)])
    assert r.ap[0, 0] == 1.0  # precision [1, .5], recall [1, 1]
    r = ap_of([("v", 0, 10, "a")], [("v", 0, 10, "a", 0.8), ("v", 0, 10, "a", 0.9), ("v", 50, 60, "a", 0.95)])
    assert r.ap[0, 0] == pytest.approx(0.5)  # FP ranked first


def test_two_instances_with_false_positive_between():
    gt = [("v", 0, 10, "a"), ("v", 20, 30, "a")]
    dets = [("v", 20, 30, "a", 0.9), ("v", 100, 110, "a", 0.8), ("v", 0, 10, "a", 0.7)]
    assert ap_of(gt, dets).ap[0, 0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_threshold_decides_match():
    gt = [("v", 0, 10, "a")]
    dets = [("v", 0, 5, "a", 0.9)]  # tIoU 0.5
    r = ap_of(gt, dets, thr=(0.5, 0.6))
    np.testing.assert_array_equal(r.ap[:, 0], [1.0, 0.0])


def test_equal_tiou_matches_later_instance():
    # The first detection overlaps both instances with tIoU 9/11; it takes the later one (B),
    # so at 0.7 the second detection (tIoU 9/11 with B, 7/13 with A) finds B taken: FP.
    gt = [("v", 0, 10, "a"), ("v", 2, 12, "a")]
    dets = [("v", 1, 11, "a", 0.9), ("v", 3, 13, "a", 0.8)]
    r = ap_of(gt, dets, thr=(0.5, 0.7))
    np.testing.assert_allclose(r.ap[:, 0], [1.0, 0.5])


def test_equal_scores_later_detection_ranks_first():
    gt = [("v", 0, 10, "a")]
    r = ap_of(gt, [("other", 0, 10, "a", 0.5), ("v", 0, 10, "a", 0.5)])
    assert r.ap[0, 0] == 1.0
    r = ap_of(gt, [("v", 0, 10, "a", 0.5), ("other", 0, 10, "a", 0.5)])
    assert r.ap[0, 0] == 0.5


def test_class_without_detections_scores_zero_and_counts_in_mean():
    gt = [("v", 0, 10, "a"), ("v", 20, 30, "b")]
    r = ap_of(gt, [("v", 0, 10, "a", 0.9)])
    assert r.classes == ["a", "b"] and r.ap[0].tolist() == [1.0, 0.0] and r.average_mAP == 0.5


def test_unknown_video_is_false_positive_and_unknown_label_ignored():
    gt = [("v", 0, 10, "a")]
    r = ap_of(gt, [("nowhere", 0, 10, "a", 0.9), ("v", 0, 10, "a", 0.8), ("v", 0, 10, "zzz", 0.99)])
    assert r.ap[0, 0] == 0.5
    assert r.num_ignored == 1 and "zzz" in r.notes[0]


def test_class_of_file_without_instances_in_subset_is_not_averaged():
    r = ap_of([("v", 0, 10, "a")], [("v", 0, 10, "a", 0.9)], classes=["a", "b"])
    assert r.classes == ["a"] and r.average_mAP == 1.0


def test_no_detections_at_all():
    r = ap_of([("v", 0, 10, "a")], [])
    assert r.average_mAP == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_loop_on_random_data(seed):
    rng = np.random.default_rng(seed)
    videos = [f"v{i}" for i in range(5)]
    labels = ["a", "b", "c"]
    gt = []
    for _ in range(25):
        s = float(rng.integers(0, 40))  # integer grid: many tIoU ties
        gt.append((str(rng.choice(videos)), s, s + float(rng.integers(0, 8)), str(rng.choice(labels))))
    dets = []
    for _ in range(150):
        if rng.random() < 0.6:
            v, s, e, lbl = gt[rng.integers(len(gt))]
            s, e = s + float(rng.integers(-2, 3)), e + float(rng.integers(-2, 3))
            s, e = min(s, e), max(s, e)
        else:
            v, lbl = str(rng.choice(videos + ["unseen"])), str(rng.choice(labels))
            s = float(rng.integers(0, 40))
            e = s + float(rng.integers(0, 8))
        dets.append((v, s, e, lbl, float(rng.integers(0, 5)) / 4))  # coarse scores: many ties
    thr = np.linspace(0.1, 0.9, 9)
    classes, ref = reference_map(gt, dets, thr)
    r = evaluate_detections(make_gt(gt), Detections.from_records(dets), thr, keep_duplicates=True)
    assert r.classes == classes
    np.testing.assert_allclose(r.ap, ref, rtol=0, atol=1e-12)


def test_official_sample_predictions(shared_data):
    gt = shared_data / "activitynet13" / "activitynet13.json"
    pred = shared_data / "activitynet13" / "sample_detection_prediction.json"
    r = evaluate_files(gt, pred, subset="validation")
    assert r.average_mAP == pytest.approx(0.9988246784907331, abs=1e-9)
    assert (r.cleanup.dropped_short, r.cleanup.dropped_repeats) == (3, 21)
    assert evaluate_files(gt, pred, subset="Validation", keep_duplicates=True).average_mAP == 1.0


def test_official_sample_predictions_match_reference_loop(shared_data):
    from e2etal.data.annotations import load_annotations

    gt = load_annotations(shared_data / "activitynet13" / "activitynet13.json").subset("validation")
    gt, _ = gt.without_repeats()
    p = load_predictions(shared_data / "activitynet13" / "sample_detection_prediction.json")
    # a third of the detections moved to perturb matches, scores spread to break the all-1.0 ties
    rng = np.random.default_rng(0)
    shift = rng.uniform(-5, 5, len(p)) * (rng.random(len(p)) < 0.3)
    p.start_s, p.end_s = p.start_s + shift, p.end_s + shift
    p.score = rng.random(len(p))
    thr = parse_tiou("0.5:0.95:10")
    rows = [(v, i.start_s, i.end_s, i.label) for v, vv in gt.videos.items() for i in vv.instances]
    classes, ref = reference_map(rows, list(zip(p.video, p.start_s, p.end_s, p.label, p.score)), thr)
    r = evaluate_detections(gt, p, thr, keep_duplicates=True)
    order = [r.classes.index(c) for c in classes]
    np.testing.assert_allclose(r.ap[:, order], ref, rtol=0, atol=1e-12)
    assert 0.5 < r.average_mAP < 0.95


def test_parse_tiou():
    assert parse_tiou("0.3:0.7:5") == pytest.approx((0.3, 0.4, 0.5, 0.6, 0.7))
    assert parse_tiou("0.3,0.5") == (0.3, 0.5)
    with pytest.raises(ValueError, match="START:STOP:NUM"):
        parse_tiou("a:b")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        parse_tiou("1.5")


def test_result_json_layout():
    r = ap_of([("v", 0, 10, "a")], [("v", 0, 10, "a", 0.9)], thr=(0.3, 0.5))
    out = json.loads(json.dumps(r.to_json()))
    assert set(out) == {"tiou", "mAP", "average_mAP", "per_class_ap"}
    assert out["per_class_ap"] == {"a": [1.0, 1.0]} and out["tiou"] == [0.3, 0.5]
