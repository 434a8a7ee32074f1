import json

import pytest

from e2etal.data.annotations import ClassMap, load_annotations


def write(tmp_path, database, name="gt.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"version": "t", "database": database}))
    return path


def video(subset="Validation", duration=10.0, anns=()):
    return {"subset": subset, "duration": duration, "annotations": list(anns)}


def test_thumos14_shared_file(shared_data):
    gt = load_annotations(shared_data / "thumos14" / "thumos14.json")
    assert len(gt.videos) == 412 and gt.num_instances() == 6365
    assert len(gt.classes) == 20
    # label_id order: index equals the file's label_id
    assert gt.classes.names[0] == "BaseballPitch" and gt.classes.index("VolleyballSpiking") == 19
    assert gt.classes.index("HighJump") == 11
    assert len(gt.subset("validation").videos) == 200 and len(gt.subset("TEST").videos) == 212
    assert gt.count_past_duration() == 30
    v = gt.videos["video_test_0000004"]
    assert v.fps == 30.0 and v.duration_s == 33.83
    assert (v.instances[0].start_s, v.instances[0].end_s, v.instances[0].label) == (0.2, 1.1, "CricketBowling")


def test_activitynet_shared_file(shared_data):
    gt = load_annotations(shared_data / "activitynet13" / "activitynet13.json")
    assert len(gt.videos) == 14950 and gt.num_instances() == 23064
    assert len(gt.classes) == 200 and list(gt.classes.names) == sorted(gt.classes.names)
    assert gt.count_past_duration() == 1732
    _, report = gt.without_repeats()
    assert report.dropped_short + report.dropped_repeats == 64
    _, val_report = gt.subset("Validation").without_repeats()
    assert (val_report.dropped_short, val_report.dropped_repeats) == (3, 21)


def test_repeats_and_short_instances(tmp_path):
    anns = [
        {"label": "a", "segment": [1.0, 2.0]},
        {"label": "a", "segment": [1.0005, 2.0009]},  # repeat within 1 ms
        {"label": "b", "segment": [1.0, 2.0]},  # other label: kept
        {"label": "a", "segment": [1.0, 2.002]},  # end differs by 2 ms: kept
        {"label": "a", "segment": [3.0, 3.0005]},  # shorter than 1 ms
    ]
    gt = load_annotations(write(tmp_path, {"v": video(anns=anns)}))
    clean, report = gt.without_repeats()
    assert (report.dropped_short, report.dropped_repeats) == (1, 1)
    assert [(i.label, i.end_s) for i in clean.videos["v"].instances] == [("a", 2.0), ("b", 2.0), ("a", 2.002)]


def test_clipped_to_duration(tmp_path):
    anns = [{"label": "a", "segment": [8.0, 12.0]}, {"label": "a", "segment": [11.0, 13.0]}]
    gt = load_annotations(write(tmp_path, {"v": video(anns=anns)}))
    assert gt.count_past_duration() == 2
    clipped = gt.clipped_to_duration()
    assert [(i.start_s, i.end_s) for i in clipped.videos["v"].instances] == [(8.0, 10.0)]


@pytest.mark.parametrize(
    "ann, message",
    [
        ({"label": "a", "segment": [5.0, 3.0]}, "start 5.0 > end 3.0"),
        ({"label": "a", "segment": [-1.0, 3.0]}, "negative time"),
        ({"label": "a", "segment": ["x", 3.0]}, "expected a number, got 'x'"),
        ({"label": "a"}, "field 'segment'"),
        ({"segment": [1.0, 2.0]}, "field 'label'"),
        ({"label": "a", "segment": [1.0, 2.0], "label_id": -3}, "field 'label_id'"),
    ],
)
def test_bad_annotations_name_file_video_and_field(tmp_path, ann, message):
    path = write(tmp_path, {"good": video(anns=[{"label": "a", "segment": [1, 2]}]), "vid7": video(anns=[ann])})
    with pytest.raises(ValueError) as e:
        load_annotations(path)
    text = str(e.value)
    assert str(path) in text and "vid7" in text and "annotation 0" in text and message in text


def test_all_problems_reported_at_once(tmp_path):
    bad = [{"label": "a", "segment": [5.0, 3.0]}] * 3
    path = write(tmp_path, {"v1": video(anns=bad), "v2": {"subset": "x", "annotations": []}})
    with pytest.raises(ValueError, match="4 problem") as e:
        load_annotations(path)
    assert "v2" in str(e.value) and "'duration'" in str(e.value)


def test_unknown_subset_lists_known(tmp_path):
    gt = load_annotations(write(tmp_path, {"v": video()}))
    with pytest.raises(ValueError, match=r"no video in subset 'training'.*\['Validation'\]"):
        gt.subset("training")


def test_class_map_from_label_id_and_conflicts(tmp_path):
    anns = [{"label": "z", "segment": [1, 2], "label_id": 0}, {"label": "a", "segment": [1, 2], "label_id": 1}]
    gt = load_annotations(write(tmp_path, {"v": video(anns=anns)}))
    assert gt.classes.names == ("z", "a")
    anns.append({"label": "b", "segment": [1, 2], "label_id": 1})
    with pytest.raises(ValueError, match="label_id 1.*used by both"):
        load_annotations(write(tmp_path, {"v": video(anns=anns)}))


def test_class_map_round_trip(tmp_path):
    cm = ClassMap(("walk", "run"))
    cm.save(tmp_path / "classes.json")
    assert ClassMap.load(tmp_path / "classes.json") == cm
    with pytest.raises(KeyError, match="unknown class 'swim'"):
        cm.index("swim")


def test_csv(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text("video,start,end,label,duration\nv1,1.0,2.5,jump,30\nv1,4,5,run,30\nv2,,,,12\n")
    gt = load_annotations(path)
    assert gt.classes.names == ("jump", "run")
    assert gt.videos["v1"].duration_s == 30.0 and len(gt.videos["v1"].instances) == 2
    assert gt.videos["v2"].instances == [] and gt.subsets == ["all"]
    assert gt.subset("all") is gt


def test_csv_errors(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text("video,start,label\nv1,1.0,jump\n")
    with pytest.raises(ValueError, match="lacks column"):
        load_annotations(path)
    path.write_text("video,start,end,label\nv1,3,2,jump\nv2,a,2,jump\n")
    with pytest.raises(ValueError) as e:
        load_annotations(path)
    assert "line 2" in str(e.value) and "line 3" in str(e.value) and "v2" in str(e.value)


def test_json_round_trip(tmp_path):
    anns = [{"label": "a", "segment": [1.0, 2.0]}, {"label": "b", "segment": [3.0, 4.0]}]
    gt = load_annotations(write(tmp_path, {"v": video(anns=anns)}))
    gt.save(tmp_path / "out.json")
    again = load_annotations(tmp_path / "out.json")
    assert again.videos["v"].instances == gt.videos["v"].instances and again.classes == gt.classes


def test_invalid_json_names_position(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text('{"database": {')
    with pytest.raises(ValueError, match=r"gt.json: not valid JSON \(line 1"):
        load_annotations(path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_annotations(tmp_path / "nope.json")
