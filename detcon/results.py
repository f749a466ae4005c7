"""Run directories of an ablation -> tidy tables (docs/design.md §2.5: ``detcon report``).

Everything is read from the files the library and the launcher write (docs/run-directory.md):
``status.json`` (state, error), ``summary.json`` (the row source of a finished point), else
``train_summary.json`` + ``eval.json`` (a point still running or failed after pretraining),
``eval_random.json`` (the random-init baseline: the floor), ``eval_supervised.json`` (the same
initialisation trained on the probe's labels: the ceiling) and ``metrics.jsonl`` (training
curves). Never from notebook outputs.

The expected points come from the ablation file (:func:`detcon.grid.expand`), so a point that
was never launched shows up as ``missing`` instead of silently shrinking the figure. A run
directory holding a corrupt or half-written JSON file is reported as ``failed`` with the reason;
it never stops the report.

Three tables come out of :func:`scan_ablation`:

- ``status`` (the completeness table): one row per expected point: ``ablation, run_id, state,
  <grid parameters>, seed, error, notebook, run_dir``; ``state`` is one of :data:`STATES`.
- ``tidy``: one row per run x backbone x metric: ``ablation, run_id, state, <grid parameters>,
  seed, backbone, task, metric, value``. ``backbone`` is ``pretrained`` (the run's encoder),
  ``random`` (its random-init baseline, the floor) or ``supervised`` (the supervised ceiling);
  ``task`` is ``pretrain`` for the numbers of
  ``train_summary.json`` (``final_loss``, ``wall_s``, ...). Grid parameters are columns named by
  their dotted config keys (``masks.source``); a key that only some points set (a ``union`` arm)
  is filled from the other points' resolved configs, so every row has every parameter.
- ``curves``: one row per run x logged step: ``run_id, seed, step, loss, normalized_proj_std``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from detcon.config import to_dict
from detcon.grid import NOTEBOOK_PREFIX, Ablation, GridPoint, expand, flatten, load_ablation
from detcon.runs import (
    DIVERGED,
    OFFICIAL_PARAMETER,
    RECORDS,
    ablation_status,
    default_out_name,
    metric_records,
    read_json,
    same_probe,
)

__all__ = [
    "REFERENCES",
    "STATES",
    "AblationScan",
    "PlotLayout",
    "choose_layout",
    "diverged_probes",
    "join_labels",
    "label_rows",
    "load_mask_quality",
    "read_curves",
    "read_run_metrics",
    "scan_ablation",
]

# Completeness states: `missing` = no run directory / never started; `pending` = queued or
# written `pending` by the launcher; `running` = a process holds the point's lock.
STATES = ("done", "failed", "running", "pending", "missing")
# The reference backbones evaluated next to a run's encoder: the random-init floor and the
# supervised ceiling, each in ``eval_<backbone>.json`` (``detcon evaluate --backbone``).
REFERENCES = ("random", "supervised")
BACKBONES = ("pretrained", *REFERENCES)
# train_summary.json fields that are not measurements (bookkeeping or labels).
_NOT_METRICS = ("resumed_from",)
# Columns of metrics.jsonl kept for the training-curves figure (docs/run-directory.md).
CURVE_COLUMNS = ("loss", "normalized_proj_std")
MASK_QUALITY_COLUMNS = ("source", "mean_best_iou", "coverage_at_50")


@dataclass(frozen=True)
class AblationScan:
    """What :func:`scan_ablation` read: the ablation, its parameter columns and three tables
    (see the module docstring for their columns)."""

    ablation: Ablation
    profile: str
    runs_root: Path
    param_keys: tuple[str, ...]
    status: pd.DataFrame
    tidy: pd.DataFrame
    curves: pd.DataFrame

    def counts(self) -> dict[str, int]:
        """``{state: number of points}`` in :data:`STATES` order (zero counts left out)."""
        seen = self.status["state"].value_counts().to_dict()
        return {s: int(seen[s]) for s in STATES if s in seen}

    def seed_summary(self) -> pd.DataFrame:
        """Mean, standard deviation (ddof 1; NaN for one seed) and number of seeds of every
        metric of the ``done`` points: one row per configuration (the grid parameters) x
        backbone x task x metric, in the tidy table's order. List values (``crop_scale``) are
        grouped by their text."""
        done = self.tidy[self.tidy["state"] == "done"]
        keys = [*self.param_keys, "backbone", "task", "metric"]
        as_text = {
            k: done[k].map(lambda v: str(v) if isinstance(v, (list, tuple)) else v)
            for k in self.param_keys
        }
        grouped = done.assign(**as_text).groupby(keys, dropna=False, sort=False)["value"]
        return grouped.agg(mean="mean", std="std", seeds="count").reset_index()


# --------------------------------------------------------------------------- reading one run


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _eval_rows(data: Mapping[str, Any], backbone: str, name: str) -> list[dict[str, Any]]:
    rows = []
    for task, metrics in data.items():
        if task in RECORDS:  # which encoder was measured and how: not a metric
            continue
        if not isinstance(metrics, Mapping):
            raise ValueError(
                f"{name}: task {task!r} holds {metrics!r}, expected a mapping metric -> number"
            )
        for metric, value in metrics.items():
            if value is None or metric == DIVERGED:
                # a metric the task could not compute (e.g. no object in a split), or a probe
                # that diverged on this encoder (its message, no metrics)
                continue
            if not _is_number(value):
                raise ValueError(f"{name}: {task}.{metric}={value!r} is not a number")
            rows.append(
                {"backbone": backbone, "task": task, "metric": metric, "value": float(value)}
            )
    return rows


def _pretrain_rows(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"backbone": "pretrained", "task": "pretrain", "metric": k, "value": float(v)}
        for k, v in data.items()
        if _is_number(v) and k not in _NOT_METRICS
    ]


def _summary_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Metric rows of a flat ``summary.json`` (:func:`detcon.runs.flatten_summary`):
    ``pretrain.<key>``, ``eval.<task>.<metric>`` and (when the launcher adds the references)
    ``eval_random.<task>.<metric>`` / ``eval_supervised.<task>.<metric>``; a summary with
    ``backbone: random`` is a baseline row."""
    own_backbone = summary.get("backbone", "pretrained")
    if own_backbone not in BACKBONES:
        raise ValueError(
            f"summary.json: backbone={own_backbone!r}, expected one of {', '.join(BACKBONES)}"
        )
    pretrain: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for key, value in summary.items():
        head, _, rest = key.partition(".")
        if head == "pretrain" and rest:
            pretrain[rest] = value
        elif rest and (head == "eval" or head.removeprefix("eval_") in REFERENCES):
            # Metric names carry no dots; task names might (a dataset suffix), so split last.
            task, _, metric = rest.rpartition(".")
            task, metric = (task, metric) if task else (rest, "value")
            backbone = own_backbone if head == "eval" else head.removeprefix("eval_")
            rows.extend(_eval_rows({task: {metric: value}}, backbone, "summary.json"))
    return _pretrain_rows(pretrain) + rows


def read_run_metrics(
    run_dir: str | Path, *, use_summary: bool = True
) -> tuple[list[dict[str, Any]], str | None]:
    """The metric rows of one run directory and the first problem found, if any.

    Rows are dicts ``backbone, task, metric, value`` (value a float). ``summary.json`` is the
    source when present and ``use_summary`` (it is what the point finished with); otherwise
    ``train_summary.json`` and ``eval.json`` (``use_summary=False``: the files an evaluation
    just wrote, as ``evaluate.ipynb`` reads them, not an earlier finish's summary);
    ``eval_random.json`` and ``eval_supervised.json`` add the references (floor and ceiling)
    either way.

    Returns:
        ``(rows, problem)``: ``problem`` is None, or one line naming the first unreadable file
        (``status``, ``point``, ``summary``, ``train_summary``, ``eval``, ``eval_random``,
        ``eval_supervised`` ``.json``) or the first non-numeric metric (rows then hold what the
        readable files gave).
    """
    run_dir = Path(run_dir)
    rows: list[dict[str, Any]] = []
    problem = None

    def load(name: str) -> dict[str, Any] | None:
        nonlocal problem
        try:
            return read_json(run_dir / name)
        except (ValueError, UnicodeDecodeError) as exc:
            problem = problem or _one_line(f"corrupt {name}: {exc}")
            return None

    # Every file is written atomically, so an unreadable one means a bug or a disk problem,
    # not a race with its writer: the point is failed. Bookkeeping files: only read to check.
    for name in ("status.json", "point.json"):
        load(name)
    summary = load("summary.json") if use_summary else None
    evaluation = load(default_out_name("pretrained"))
    # a reference file probed otherwise than eval.json (an earlier evaluation's) is left out
    references = {b: load(default_out_name(b)) for b in REFERENCES}
    references = {b: r if same_probe(evaluation, r) else None for b, r in references.items()}
    try:
        if summary is not None:
            rows += _summary_rows(summary)
        else:
            train = load("train_summary.json")
            rows += _pretrain_rows(train or {})
            rows += _eval_rows(evaluation or {}, "pretrained", default_out_name("pretrained"))
        for backbone, data in references.items():  # summary.json may hold them already
            if data is not None and not any(r["backbone"] == backbone for r in rows):
                rows += _eval_rows(data, backbone, default_out_name(backbone))
    except ValueError as exc:
        problem = problem or _one_line(f"corrupt results: {exc}")
    return rows, problem


def diverged_probes(run_dir: str | Path) -> list[str]:
    """One line ``"<backbone>: <task> diverged (<message>)"`` per probe whose head diverged on an
    encoder of ``run_dir`` (``eval.json`` and the references' files; :data:`DIVERGED`). These
    probes have no metric rows in :func:`read_run_metrics`; unreadable files are its problem to
    report, not this function's."""
    run_dir = Path(run_dir)
    lines = []
    for backbone in BACKBONES:
        try:
            data = read_json(run_dir / default_out_name(backbone))
        except (ValueError, UnicodeDecodeError):
            continue
        for task, metrics in (data or {}).items():
            if isinstance(metrics, Mapping) and DIVERGED in metrics:
                lines.append(f"{backbone}: {task} diverged ({metrics[DIVERGED]})")
    return lines


def _one_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0][:500] if lines else ""


def read_curves(run_dir: str | Path) -> pd.DataFrame:
    """``metrics.jsonl`` as a table: ``step`` and :data:`CURVE_COLUMNS` (NaN where a line lacks
    one). Torn or non-JSON lines (a job killed mid-write) are skipped; no file -> no rows."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):  # not started, or no run directory at all
        text = ""
    for row in metric_records(text):
        if _is_number(row.get("step")):
            rows.append(
                {"step": int(row["step"])}
                | {c: float(row[c]) if _is_number(row.get(c)) else math.nan for c in CURVE_COLUMNS}
            )
    return pd.DataFrame(rows, columns=["step", *CURVE_COLUMNS])


# --------------------------------------------------------------------------- one ablation


def _param_table(points: Sequence[GridPoint]) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """Grid-parameter columns (dotted keys in grid order, seed excluded) and, per point, its
    value for each; a key a point does not set comes from that point's resolved config."""
    keys: dict[str, None] = {}
    for p in points:
        keys.update(dict.fromkeys(k for k in p.params if k != "seed"))
    values = []
    for p in points:
        config = flatten(to_dict(p.config)) if set(keys) - set(p.params) else {}
        row = {k: p.params[k] if k in p.params else config.get(k) for k in keys}
        official = NOTEBOOK_PREFIX + OFFICIAL_PARAMETER
        if official in row:  # which weights: figures label the points "ours" / "official <file>"
            row[official] = f"official {Path(row[official]).stem}" if row[official] else "ours"
        values.append(row)
    return tuple(keys), values


def _state(launcher_state: str) -> tuple[str, str | None]:
    """The launcher's point state (:class:`detcon.runs.PointState`) as a completeness state."""
    if launcher_state == "not started":
        return "missing", None
    if launcher_state == "interrupted":
        # status.json says running but no process holds the lock: killed, or requeued and
        # waiting. `detcon run` resumes it from its checkpoint.
        return "failed", "interrupted: status.json says running but no process holds the lock"
    if launcher_state in ("corrupt", "broken"):  # the launcher's error says why
        return "failed", None
    if launcher_state not in STATES:
        return "failed", f"unknown state {launcher_state!r} in status.json"
    return launcher_state, None


def scan_ablation(
    ablation_path: str | Path, *, profile: str = "cpu", runs_dir: str | Path = "runs"
) -> AblationScan:
    """Read every expected point of an ablation from ``<runs_dir>/<ablation name>/<run_id>/``.

    Args:
        ablation_path: the ablation file (``ablations/<name>.yaml``).
        profile: the profile the points were run at (run ids depend on it).
        runs_dir: the folder ``detcon run --runs-dir`` wrote to.
    Returns:
        The scan; its tables follow the module docstring. Rows are in the launcher's order
        (seeds outermost, then the grid in file order).
    Raises:
        FileNotFoundError / ConfigError: a missing or invalid ablation file.
    """
    ablation = load_ablation(ablation_path)
    points = expand(ablation, profile)
    runs_root = Path(runs_dir) / ablation.name
    launcher = ablation_status(ablation_path, profile=profile, runs_dir=runs_dir)
    states = {s.run_id: s for s in launcher}
    param_keys, param_values = _param_table(points)

    status_rows, tidy_rows, curve_frames = [], [], []
    for point, params in zip(points, param_values):
        st = states[point.run_id]
        state, error = _state(st.state)
        error = error or st.error
        rows, problem = read_run_metrics(st.run_dir) if st.run_dir.is_dir() else ([], None)
        if problem is not None:
            # point_state may call a point with an unreadable file done or not started.
            state, error = "failed", problem
        elif state == "failed" and not error:
            error = "failed (no error text in status.json)"
        ident = {"ablation": ablation.name, "run_id": point.run_id, "state": state}
        ident |= params | {"seed": point.params["seed"]}
        status_rows.append(
            ident
            | {
                "error": error if state == "failed" else None,
                "notebook": str(st.notebook) if st.notebook else None,
                "run_dir": str(st.run_dir),
            }
        )
        tidy_rows += [ident | r for r in rows]
        curves = read_curves(st.run_dir)
        if len(curves):
            curve_frames.append(curves.assign(run_id=point.run_id, seed=point.params["seed"]))

    ident_cols = ["ablation", "run_id", "state", *param_keys, "seed"]
    status = pd.DataFrame(status_rows, columns=[*ident_cols, "error", "notebook", "run_dir"])
    tidy = pd.DataFrame(tidy_rows, columns=[*ident_cols, "backbone", "task", "metric", "value"])
    tidy["value"] = tidy["value"].astype(float)
    curve_cols = ["run_id", "seed", "step", *CURVE_COLUMNS]
    curves = (
        pd.concat(curve_frames, ignore_index=True)[curve_cols]
        if curve_frames
        else pd.DataFrame(columns=curve_cols)
    )
    return AblationScan(ablation, profile, runs_root, param_keys, status, tidy, curves)


def load_mask_quality(path: str | Path) -> pd.DataFrame | None:
    """``figures/mask_quality.csv`` (columns :data:`MASK_QUALITY_COLUMNS`, one row per mask
    source; IoUs in [0, 1]), or None when the file does not exist.

    Raises:
        ValueError: the file lacks a column or has a non-numeric quality value.
    """
    path = Path(path)
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    missing = [c for c in MASK_QUALITY_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; expected columns "
            f"{', '.join(MASK_QUALITY_COLUMNS)}"
        )
    for col in MASK_QUALITY_COLUMNS[1:]:
        if not pd.api.types.is_numeric_dtype(table[col]):
            raise ValueError(f"{path}: column {col!r} must hold numbers in [0, 1]")
    table["source"] = table["source"].astype(str)
    return table[list(MASK_QUALITY_COLUMNS)]


# --------------------------------------------------------------------------- figure layout


@dataclass(frozen=True)
class PlotLayout:
    """How an ablation's points map onto a figure panel.

    ``x``: the column on the categorical x axis; ``hue``: the column coloured, or None;
    ``x_order`` / ``hue_order``: their values (as strings) in grid order. ``x`` / ``hue`` name a
    grid parameter (``masks.source``) or a combination (``method / masks.source``), whose string
    values :func:`label_rows` writes into a table.
    """

    x: str
    hue: str | None
    x_keys: tuple[str, ...]
    hue_keys: tuple[str, ...]
    x_order: tuple[str, ...]
    hue_order: tuple[str, ...] | None


def _label(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    return " / ".join(_text(row[k]) for k in keys)


def _text(value: Any) -> str:
    """A parameter value as a figure shows it: a whole float without its ``.0`` (a column of
    2.4, 4.8 and 24 epochs reads back from CSV as floats; 24, as the ablation file says)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _determined_by(table: pd.DataFrame, key: str, by: Sequence[str]) -> bool:
    if not by:
        return False
    grouped = table.groupby(list(by), dropna=False, sort=False)[key]
    return bool((grouped.nunique(dropna=False) <= 1).all())


def choose_layout(status: pd.DataFrame, param_keys: Sequence[str]) -> PlotLayout:
    """Pick the x axis and hue from the parameters that vary across the points.

    Rules (all keys in grid order, ``seed`` never used):

    1. keep the parameters with more than one value, dropping any that the parameters before it
       determine (a ``union`` arm's ``masks.num_samples: 1`` follows from ``method: byol``);
    2. one parameter: it is x; none: x is the run itself;
    3. parameters forming a full product: x is the one with most values (ties: the last, the
       ablated quantity of the paper's panels, e.g. resolution), hue the others combined;
    4. otherwise (union arms): x is all of them combined, no hue.
    """
    table = status.copy()
    for key in param_keys:  # lists (crop_scale) are unhashable: compare their text, as drawn
        table[key] = table[key].map(_text)
    varying = [k for k in param_keys if table[k].nunique(dropna=False) > 1]
    kept: list[str] = []
    for key in varying:
        if not _determined_by(table, key, kept):
            kept.append(key)
    if not kept:
        x_keys: tuple[str, ...] = ("run_id",)
        hue_keys: tuple[str, ...] = ()
    elif len(kept) == 1:
        x_keys, hue_keys = (kept[0],), ()
    else:
        sizes = {k: table[k].nunique() for k in kept}
        n_combos = len(table[kept].drop_duplicates())
        if n_combos == math.prod(sizes.values()):
            most = max(sizes.values())
            x_key = [k for k in kept if sizes[k] == most][-1]
            x_keys, hue_keys = (x_key,), tuple(k for k in kept if k != x_key)
        else:
            x_keys, hue_keys = tuple(kept), ()

    def order(keys: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_label(r, keys) for r in table.to_dict("records")))

    return PlotLayout(
        x=" / ".join(x_keys),
        hue=" / ".join(hue_keys) if hue_keys else None,
        x_keys=x_keys,
        hue_keys=hue_keys,
        x_order=order(x_keys),
        hue_order=order(hue_keys) if hue_keys else None,
    )


def join_labels(table: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """Per row of ``table``, the values of ``keys`` as text joined by `` / `` (e.g.
    ``detcon_b / fh``): the category a figure shows for that row."""
    return [_label(r, keys) for r in table.to_dict("records")]


def label_rows(table: pd.DataFrame, layout: PlotLayout) -> pd.DataFrame:
    """A copy of ``table`` (status, tidy or curves joined with parameters) with the string
    columns ``layout.x`` and ``layout.hue`` the figures plot."""
    out = table.copy()
    out[layout.x] = join_labels(table, layout.x_keys)
    if layout.hue is not None:
        out[layout.hue] = join_labels(table, layout.hue_keys)
    return out
