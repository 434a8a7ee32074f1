import json

import numpy as np
import pytest

from e2etal.data.predictions import Detections, load_predictions, save_predictions


def test_round_trip_sorted_by_score(tmp_path):
    dets = Detections.from_records([("v1", 1.0, 2.0, "a", 0.2), ("v1", 3.0, 4.0, "b", 0.9), ("v2", 0.0, 1.5, "a", 0.5)])
    path = tmp_path / "sub" / "pred.json"
    save_predictions(path, dets)
    data = json.loads(path.read_text())
    assert set(data) == {"version", "results", "external_data"}
    assert [d["score"] for d in data["results"]["v1"]] == [0.9, 0.2]
    again = load_predictions(path)
    assert len(again) == 3 and sorted(again.score.tolist()) == [0.2, 0.5, 0.9]
    assert np.allclose(sorted(again.end_s), [1.5, 2.0, 4.0])


def test_shared_sample_file(shared_data):
    p = load_predictions(shared_data / "activitynet13" / "sample_detection_prediction.json")
    assert len(p) == 7654 and len(set(p.video)) == 4926


@pytest.mark.parametrize(
    "det, message",
    [
        ({"label": "a", "score": 0.5}, "expected an object with 'label', 'score' and 'segment'"),
        ({"label": 3, "score": 0.5, "segment": [1, 2]}, "field 'label'"),
        ({"label": "a", "score": "high", "segment": [1, 2]}, "field 'score'"),
        ({"label": "a", "score": 0.5, "segment": [3, 2]}, "start 3 > end 2"),
        ({"label": "a", "score": 0.5, "segment": [1]}, "field 'segment'"),
    ],
)
def test_bad_predictions_name_file_video_and_field(tmp_path, det, message):
    path = tmp_path / "pred.json"
    path.write_text(json.dumps({"results": {"vidX": [{"label": "a", "score": 1, "segment": [0, 1]}, det]}}))
    with pytest.raises(ValueError) as e:
        load_predictions(path)
    assert "pred.json" in str(e.value) and "'vidX', detection 1" in str(e.value) and message in str(e.value)


def test_missing_results_key(tmp_path):
    path = tmp_path / "pred.json"
    path.write_text(json.dumps({"database": {}}))
    with pytest.raises(ValueError, match="'results' mapping"):
        load_predictions(path)
