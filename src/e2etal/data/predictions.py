"""Detections in the ActivityNet results layout:
`{"version", "results": {video: [{"label", "score", "segment": [start_s, end_s]}]}, "external_data": {}}`.

This is the file ActivityNet's evaluation server, OpenTAD and this toolkit exchange.
Detections are held column-wise (one NumPy array per field) so that 10^5 of them evaluate fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from e2etal import io

MAX_LISTED_ERRORS = 20


@dataclass
class Detections:
    video: np.ndarray  # [N] object (str)
    start_s: np.ndarray  # [N] float64
    end_s: np.ndarray  # [N] float64
    label: np.ndarray  # [N] object (str)
    score: np.ndarray  # [N] float64

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def from_records(cls, records: list[tuple[str, float, float, str, float]]) -> Detections:
        """From `(video, start_s, end_s, label, score)` tuples."""
        if not records:
            return cls.empty()
        video, start, end, label, score = zip(*records)
        return cls(
            np.array(video, dtype=object),
            np.asarray(start, dtype=np.float64),
            np.asarray(end, dtype=np.float64),
            np.array(label, dtype=object),
            np.asarray(score, dtype=np.float64),
        )

    @classmethod
    def empty(cls) -> Detections:
        obj = np.empty(0, dtype=object)
        f = np.empty(0, dtype=np.float64)
        return cls(obj, f, f.copy(), obj.copy(), f.copy())

    def by_video(self) -> dict[str, list[dict]]:
        """The `results` mapping of the ActivityNet layout, highest score first per video."""
        out: dict[str, list[dict]] = {}
        order = np.argsort(-self.score, kind="stable")
        for i in order:
            out.setdefault(str(self.video[i]), []).append(
                {"label": str(self.label[i]), "score": float(self.score[i]),
                 "segment": [float(self.start_s[i]), float(self.end_s[i])]}
            )
        return out


def parse_results(data, source: str) -> Detections:
    """Validate and convert a parsed results JSON object."""
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{source}: expected an object with a 'results' mapping of video id -> list of detections")
    videos, starts, ends, labels, scores = [], [], [], [], []
    errors: list[str] = []
    for vid, dets in data["results"].items():
        if not isinstance(dets, list):
            errors.append(f"video {vid!r}: expected a list of detections, got {type(dets).__name__}")
            continue
        for i, d in enumerate(dets):
            where = f"video {vid!r}, detection {i}"
            try:
                label, score, seg = d["label"], d["score"], d["segment"]
            except (KeyError, TypeError):
                errors.append(f"{where}: expected an object with 'label', 'score' and 'segment'")
                continue
            if not isinstance(label, str):
                errors.append(f"{where}, field 'label': expected a class name, got {label!r}")
                continue
            ok_num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            if not ok_num(score):
                errors.append(f"{where}, field 'score': expected a finite number, got {score!r}")
                continue
            if not isinstance(seg, (list, tuple)) or len(seg) != 2 or not all(ok_num(x) for x in seg):
                errors.append(f"{where}, field 'segment': expected [start, end] numbers, got {seg!r}")
                continue
            if seg[0] > seg[1]:
                errors.append(f"{where}, field 'segment': start {seg[0]} > end {seg[1]}")
                continue
            videos.append(vid)
            starts.append(seg[0])
            ends.append(seg[1])
            labels.append(label)
            scores.append(score)
    if errors:
        shown = "\n  ".join(errors[:MAX_LISTED_ERRORS])
        more = f"\n  ... and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
        raise ValueError(f"{source}: {len(errors)} problem(s) in the predictions:\n  {shown}{more}")
    return Detections(
        np.array(videos, dtype=object),
        np.asarray(starts, dtype=np.float64),
        np.asarray(ends, dtype=np.float64),
        np.array(labels, dtype=object),
        np.asarray(scores, dtype=np.float64),
    )


def load_predictions(path: str | Path) -> Detections:
    return parse_results(io.read_json(path), str(path))


def save_predictions(path: str | Path, detections: Detections, version: str = "VERSION 1.3") -> None:
    """Write the ActivityNet results JSON atomically (a crash never leaves half a file)."""
    io.write_json(
        path,
        {"version": version, "results": detections.by_video(), "external_data": {"used": False, "details": "e2etal"}},
        indent=None,
    )
