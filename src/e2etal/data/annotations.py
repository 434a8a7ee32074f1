"""Ground-truth annotations: the ActivityNet `database` JSON (and ActionFormer's THUMOS-14
variant with `fps`, `label_id`, `segment(frames)`), and a simple CSV for custom datasets.

Everything is validated on load; every problem found is reported at once with the file,
the video, the annotation index and the field. Times are seconds throughout.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from e2etal import io

ALL_SUBSETS = "all"
MAX_LISTED_ERRORS = 20


@dataclass(frozen=True)
class Instance:
    start_s: float
    end_s: float
    label: str


@dataclass
class VideoAnnotation:
    video_id: str
    subset: str
    duration_s: float | None
    fps: float | None
    instances: list[Instance] = field(default_factory=list)


@dataclass(frozen=True)
class ClassMap:
    """Class names in a stable order: by `label_id` where the file has it, else sorted by name.

    The index of a class is its position in `names`; with `label_id`s 0..K-1 the index
    equals the `label_id`. Saved next to every checkpoint as `classes.json`.
    """

    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self._lookup[name]
        except KeyError:
            raise KeyError(f"unknown class {name!r}; known: {list(self.names)[:10]}...") from None

    @property
    def _lookup(self) -> dict[str, int]:
        lookup = self.__dict__.get("_lookup_cache")
        if lookup is None:
            lookup = {n: i for i, n in enumerate(self.names)}
            object.__setattr__(self, "_lookup_cache", lookup)
        return lookup

    def save(self, path: str | Path) -> None:
        io.write_json(path, {"classes": list(self.names)})

    @classmethod
    def load(cls, path: str | Path) -> ClassMap:
        data = io.read_json(path)
        names = data.get("classes") if isinstance(data, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: expected {{'classes': [name, ...]}}")
        return cls(tuple(names))


@dataclass(frozen=True)
class CleanupReport:
    """What `Annotations.without_repeats` dropped."""

    dropped_short: int
    dropped_repeats: int

    def __str__(self) -> str:
        return (
            f"dropped {self.dropped_short} ground-truth instance(s) shorter than 1 ms and "
            f"{self.dropped_repeats} repeat(s)"
        )


@dataclass
class Annotations:
    source: str
    videos: dict[str, VideoAnnotation]
    classes: ClassMap

    @property
    def subsets(self) -> list[str]:
        return sorted({v.subset for v in self.videos.values()})

    def num_instances(self) -> int:
        return sum(len(v.instances) for v in self.videos.values())

    def subset(self, name: str) -> Annotations:
        """Videos of one subset, matched case-insensitively; "all" keeps every video."""
        if name.lower() == ALL_SUBSETS:
            return self
        want = name.lower()
        videos = {k: v for k, v in self.videos.items() if v.subset.lower() == want}
        if not videos:
            raise ValueError(f"{self.source}: no video in subset {name!r}; subsets: {self.subsets}")
        return Annotations(self.source, videos, self.classes)

    def count_past_duration(self) -> int:
        """Instances ending after their video's duration (common in the real files)."""
        return sum(
            1
            for v in self.videos.values()
            if v.duration_s is not None
            for inst in v.instances
            if inst.end_s > v.duration_s
        )

    def clipped_to_duration(self) -> Annotations:
        """Instances clipped to [0, duration]; those left empty are dropped. For training."""
        videos = {}
        for vid, v in self.videos.items():
            instances = v.instances
            if v.duration_s is not None:
                instances = [
                    Instance(inst.start_s, min(inst.end_s, v.duration_s), inst.label)
                    for inst in instances
                    if inst.start_s < v.duration_s
                ]
            videos[vid] = dataclasses.replace(v, instances=instances)
        return Annotations(self.source, videos, self.classes)

    def without_repeats(self, min_length_s: float = 1e-3, tolerance_s: float = 1e-3):
        """Drop instances shorter than `min_length_s` and repeats (same label, start and end
        within `tolerance_s` of an instance kept before them), as ActionFormer's and
        OpenTAD's evaluation do. Returns `(annotations, CleanupReport)`."""
        videos = {}
        n_short = n_repeat = 0
        for vid, v in self.videos.items():
            kept: list[Instance] = []
            for inst in v.instances:
                if inst.end_s - inst.start_s < min_length_s:
                    n_short += 1
                    continue
                if any(
                    k.label == inst.label
                    and abs(k.start_s - inst.start_s) <= tolerance_s
                    and abs(k.end_s - inst.end_s) <= tolerance_s
                    for k in kept
                ):
                    n_repeat += 1
                    continue
                kept.append(inst)
            videos[vid] = dataclasses.replace(v, instances=kept)
        return Annotations(self.source, videos, self.classes), CleanupReport(n_short, n_repeat)

    def to_json(self, version: str = "e2etal") -> dict:
        """The ActivityNet `database` layout, with `label_id` from the class map."""
        database = {}
        for vid, v in self.videos.items():
            entry: dict = {"subset": v.subset}
            if v.duration_s is not None:
                entry["duration"] = v.duration_s
            if v.fps is not None:
                entry["fps"] = v.fps
            entry["annotations"] = [
                {"label": i.label, "segment": [i.start_s, i.end_s], "label_id": self.classes.index(i.label)}
                for i in v.instances
            ]
            database[vid] = entry
        return {"version": version, "database": database}

    def save(self, path: str | Path, version: str = "e2etal") -> None:
        io.write_json(path, self.to_json(version))


class _Errors:
    """Collects validation problems so a file reports all of them at once."""

    def __init__(self, source: str):
        self.source = source
        self.items: list[str] = []

    def add(self, video: str | None, where: str, msg: str) -> None:
        prefix = f"video {video!r}, " if video is not None else ""
        self.items.append(f"{prefix}{where}: {msg}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = "\n  ".join(self.items[:MAX_LISTED_ERRORS])
        more = len(self.items) - MAX_LISTED_ERRORS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise ValueError(f"{self.source}: {len(self.items)} problem(s) in the annotations:\n  {shown}{tail}")


def _number(value, errors: _Errors, video: str, where: str) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        errors.add(video, where, f"expected a number, got {value!r}")
        return None
    try:
        x = float(value)
    except ValueError:
        errors.add(video, where, f"expected a number, got {value!r}")
        return None
    if not math.isfinite(x):
        errors.add(video, where, f"expected a finite number, got {value!r}")
        return None
    return x


def _check_segment(start, end, errors: _Errors, video: str, where: str) -> bool:
    if start is None or end is None:
        return False
    if start < 0 or end < 0:
        errors.add(video, where, f"negative time [{start}, {end}]")
        return False
    if start > end:
        errors.add(video, where, f"start {start} > end {end}")
        return False
    return True


def _class_map(label_ids: dict[str, set[int]], labels: set[str], errors: _Errors) -> ClassMap:
    if not label_ids:
        return ClassMap(tuple(sorted(labels)))
    for label, ids in sorted(label_ids.items()):
        if len(ids) > 1:
            errors.add(None, f"label {label!r}", f"has several label_id values {sorted(ids)}")
    by_id: dict[int, str] = {}
    for label, ids in label_ids.items():
        for i in ids:
            if i in by_id and by_id[i] != label:
                errors.add(None, f"label_id {i}", f"used by both {by_id[i]!r} and {label!r}")
            by_id[i] = label
    missing = sorted(labels - set(label_ids))
    if missing:
        errors.add(None, "label_id", f"missing for label(s) {missing} while other labels have one")
    errors.raise_if_any()
    return ClassMap(tuple(label for _, label in sorted((min(ids), label) for label, ids in label_ids.items())))


def parse_database(data, source: str) -> Annotations:
    """Validate and convert a parsed ActivityNet-layout JSON object."""
    errors = _Errors(source)
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise ValueError(f"{source}: expected an object with a 'database' mapping of video id -> entry")
    videos: dict[str, VideoAnnotation] = {}
    labels: set[str] = set()
    label_ids: dict[str, set[int]] = {}
    for vid, entry in data["database"].items():
        if not isinstance(entry, dict):
            errors.add(vid, "entry", "expected an object")
            continue
        subset = entry.get("subset")
        if not isinstance(subset, str):
            errors.add(vid, "field 'subset'", "missing or not a string")
        duration = fps = None
        if "duration" not in entry:
            errors.add(vid, "field 'duration'", "missing")
        else:
            duration = _number(entry["duration"], errors, vid, "field 'duration'")
            if duration is not None and duration <= 0:
                errors.add(vid, "field 'duration'", f"must be positive, got {duration}")
        if entry.get("fps") is not None:
            fps = _number(entry["fps"], errors, vid, "field 'fps'")
        raw = entry.get("annotations")
        if not isinstance(raw, list):
            errors.add(vid, "field 'annotations'", "missing or not a list")
            raw = []
        instances = []
        for i, ann in enumerate(raw):
            where = f"annotation {i}"
            if not isinstance(ann, dict):
                errors.add(vid, where, "expected an object")
                continue
            label = ann.get("label")
            if not isinstance(label, str) or not label:
                errors.add(vid, f"{where}, field 'label'", "missing or not a non-empty string")
                continue
            seg = ann.get("segment")
            if not isinstance(seg, (list, tuple)) or len(seg) != 2:
                errors.add(vid, f"{where}, field 'segment'", f"expected [start, end], got {seg!r}")
                continue
            start = _number(seg[0], errors, vid, f"{where}, field 'segment'")
            end = _number(seg[1], errors, vid, f"{where}, field 'segment'")
            if not _check_segment(start, end, errors, vid, f"{where}, field 'segment'"):
                continue
            if "label_id" in ann:
                lid = ann["label_id"]
                if isinstance(lid, bool) or not isinstance(lid, (int, float)) or int(lid) != lid or lid < 0:
                    errors.add(vid, f"{where}, field 'label_id'", f"expected a non-negative integer, got {lid!r}")
                else:
                    label_ids.setdefault(label, set()).add(int(lid))
            labels.add(label)
            instances.append(Instance(start, end, label))
        videos[str(vid)] = VideoAnnotation(str(vid), subset or "", duration, fps, instances)
    errors.raise_if_any()
    return Annotations(source, videos, _class_map(label_ids, labels, errors))


CSV_COLUMNS = ("video", "start", "end", "label")


def parse_csv(path: Path) -> Annotations:
    """`video,start,end,label[,duration][,subset]` with a header row; times in seconds.

    A video without actions is one row with empty start, end and label. Without a
    `subset` column every video is in subset "all"."""
    source = str(path)
    errors = _Errors(source)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{source}: header {header} lacks column(s) {missing}; expected video,start,end,label[,duration][,subset]")
        reader.fieldnames = header
        videos: dict[str, VideoAnnotation] = {}
        labels: set[str] = set()
        for row_no, row in enumerate(reader, start=2):
            vid = (row.get("video") or "").strip()
            where = f"line {row_no}"
            if not vid:
                errors.add(None, f"{where}, field 'video'", "empty")
                continue
            duration = None
            if (row.get("duration") or "").strip():
                duration = _number(row["duration"].strip(), errors, vid, f"{where}, field 'duration'")
            subset = (row.get("subset") or "").strip() or ALL_SUBSETS
            video = videos.setdefault(vid, VideoAnnotation(vid, subset, duration, None))
            if duration is not None and video.duration_s is not None and duration != video.duration_s:
                errors.add(vid, f"{where}, field 'duration'", f"{duration} differs from {video.duration_s} given earlier")
            video.duration_s = video.duration_s if video.duration_s is not None else duration
            label = (row.get("label") or "").strip()
            start_raw, end_raw = (row.get("start") or "").strip(), (row.get("end") or "").strip()
            if not label and not start_raw and not end_raw:
                continue
            if not label:
                errors.add(vid, f"{where}, field 'label'", "empty")
                continue
            start = _number(start_raw, errors, vid, f"{where}, field 'start'")
            end = _number(end_raw, errors, vid, f"{where}, field 'end'")
            if _check_segment(start, end, errors, vid, where):
                labels.add(label)
                video.instances.append(Instance(start, end, label))
    errors.raise_if_any()
    return Annotations(source, videos, ClassMap(tuple(sorted(labels))))


def load_annotations(path: str | Path) -> Annotations:
    """Read ground truth from an ActivityNet-layout `.json` or a `.csv` file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such annotation file")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; expected an annotation file (.json or .csv)")
    if path.suffix.lower() == ".csv":
        return parse_csv(path)
    return parse_database(io.read_json(path), str(path))
