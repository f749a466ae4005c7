"""Downstream evaluation of pretrained encoders (docs/design.md §5).

``evaluate_run(run_dir, ...)`` rebuilds a run's encoder (or its random-init baseline), trains
the task heads of a profile and writes ``eval.json`` as ``{task: {metric: value}}``:

- ``segmentation``: FCN head, ``miou`` (background included) and ``pixel_acc``;
- ``depth``: deconvolution head, ``rmse`` (metres) and ``delta1``;
- ``linear``: logistic regression on pooled frozen features, ``top1`` (+ ``presence_map``);
- ``detection``: Mask R-CNN + FPN, COCO ``ap_bb`` / ``ap_mk`` (IoU .50:.95) and ``ap50_*``.

``evaluate_references(run_dir, ["random", "supervised"], reference_cache=...)`` adds a point's
floor and ceiling through a cache shared by the points that have the same ones;
``evaluate_point_references`` asks for them as the evaluate notebook's parameters do.

Settings per profile are frozen dataclasses in :mod:`detcon.evaluate.settings`.
"""

from detcon.evaluate.backbones import (
    BackboneStages,
    backbone_from_run,
    backbone_state,
    load_run_config,
    load_torchvision_resnet,
    make_backbone,
)
from detcon.evaluate.run import (
    ReferenceBusyError,
    default_out_name,
    evaluate_point_references,
    evaluate_references,
    evaluate_run,
    settings_for_run,
)
from detcon.evaluate.settings import (
    TASKS,
    DataSpec,
    DenseSettings,
    DetectionSettings,
    EvalSettings,
    LinearSettings,
    OptimSettings,
    cpu_settings,
    get_settings,
    paper_settings,
)

__all__ = [
    "TASKS",
    "BackboneStages",
    "DataSpec",
    "DenseSettings",
    "DetectionSettings",
    "EvalSettings",
    "LinearSettings",
    "OptimSettings",
    "ReferenceBusyError",
    "backbone_from_run",
    "backbone_state",
    "cpu_settings",
    "default_out_name",
    "evaluate_point_references",
    "evaluate_references",
    "evaluate_run",
    "get_settings",
    "load_run_config",
    "load_torchvision_resnet",
    "make_backbone",
    "paper_settings",
    "settings_for_run",
]
