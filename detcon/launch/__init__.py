"""``detcon run`` / ``detcon status``: validate an ablation grid, then run each point's notebooks.

Flow (docs/design.md §2): expand the ablation file into grid points; validate *every* point before
anything is written or submitted (config, evaluation task names, notebook parameters, data paths,
cluster profile); skip points that are done (a valid ``summary.json``), points locked by another
process and points whose run directory cannot be used (reported); rerun points whose
``status.json`` or ``summary.json`` is corrupt; then run each remaining point as one job through
an executor (``local``, ``slurm`` or ``debug``), which takes over a finished run of the same
config instead of training when there is one.

The modules, in the order a launch uses them:

- :mod:`detcon.launch.notebooks`: where the notebooks are, their ``parameters`` cell, the kernel,
  rendering to HTML;
- :mod:`detcon.launch.plan`: cluster profiles, and :func:`prepare`, which validates every point
  into a :class:`Plan` before anything is written;
- :mod:`detcon.launch.reuse`: finding a finished run of a point's config (any ablation file
  under the same runs folder) and taking over its results instead of training again;
- :mod:`detcon.launch.point`: :func:`run_point`, the job that runs one point's notebooks through
  papermill in its run directory;
- :mod:`detcon.launch.executors`: :func:`run_ablation` and the local, slurm and debug executors;
- :mod:`detcon.launch.cli`: ``detcon run`` and ``detcon status``.

Reading the state of an ablation's points (:func:`detcon.runs.ablation_status`) belongs to the
run-directory code: ``detcon report`` reads it without importing the launcher.
"""

from detcon.launch.cli import format_status, register_cli
from detcon.launch.executors import LaunchResult, run_ablation
from detcon.launch.notebooks import (
    EVALUATE_NOTEBOOK,
    NOTEBOOK_DIR,
    REPO,
    check_parameters,
    execute_notebook,
    kernel_name,
    notebook_parameters,
    notebook_path,
    render_html,
)
from detcon.launch.plan import (
    CLUSTER_DIR,
    EXECUTORS,
    ClusterProfile,
    Plan,
    describe_plan,
    load_cluster_profile,
    prepare,
)
from detcon.launch.point import PointFailedError, PointJob, PointSpec, run_point
from detcon.runs import OFFICIAL_PARAMETER, ablation_status

__all__ = [
    "CLUSTER_DIR",
    "EVALUATE_NOTEBOOK",
    "EXECUTORS",
    "NOTEBOOK_DIR",
    "OFFICIAL_PARAMETER",
    "REPO",
    "ClusterProfile",
    "LaunchResult",
    "Plan",
    "PointFailedError",
    "PointJob",
    "PointSpec",
    "ablation_status",
    "check_parameters",
    "describe_plan",
    "execute_notebook",
    "format_status",
    "kernel_name",
    "load_cluster_profile",
    "notebook_parameters",
    "notebook_path",
    "prepare",
    "register_cli",
    "render_html",
    "run_ablation",
    "run_point",
]
