"""e2etal: end-to-end temporal action localization.

The Python API behind every `e2etal` command:

>>> from e2etal import load_annotations, load_predictions, evaluate_detections
>>> gt = load_annotations("activitynet13.json").subset("validation")
>>> result = evaluate_detections(gt, load_predictions("results.json"))
>>> print(result.table())
"""

__version__ = "0.1.0"

from e2etal.config import load_config
from e2etal.data.annotations import Annotations, ClassMap, load_annotations
from e2etal.data.predictions import Detections, load_predictions, save_predictions
from e2etal.metrics import DetectionResult, evaluate_detections, evaluate_files

__all__ = [
    "Annotations",
    "ClassMap",
    "DetectionResult",
    "Detections",
    "evaluate_detections",
    "evaluate_files",
    "load_annotations",
    "load_config",
    "load_predictions",
    "save_predictions",
]
