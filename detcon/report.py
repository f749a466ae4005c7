"""``detcon report ABLATION.yaml``: tidy tables, seaborn figures and the index page of an ablation.

Reads every expected point's run directory (:func:`detcon.results.scan_ablation`) and writes,
each file atomically (:mod:`detcon.atomic`):

- ``<figures>/<ablation>.png`` / ``.pdf``: one panel per downstream (task, metric), mean over
  seeds with a 95% bootstrap CI and every seed, between two reference lines: the random-init
  floor (dashed, ``eval_random.json``) and the supervised ceiling (dash-dot,
  ``eval_supervised.json``), each drawn where some point evaluated it;
- ``<figures>/<ablation>.csv``: the tidy table behind it (every run x backbone x metric, with
  the run's state: the figure plots the ``done`` rows);
- ``<figures>/<ablation>_curves.png``: loss and collapse indicator against the step, per run;
- ``<figures>/<ablation>_mask_quality.png`` / ``.pdf``: downstream metric against mask quality,
  when the ablation varies ``masks.source`` and ``<figures>/mask_quality.csv`` exists;
- ``<figures>/<ablation>_summary.csv``: mean, std and number of seeds of every metric of the
  ``done`` points, per configuration and backbone (:meth:`AblationScan.seed_summary`);
- ``<figures>/<ablation>_status.csv``: the completeness table (every point, its state, the
  first error line and the rendered notebook of failures);
- ``<runs>/<ablation>/index.html``: every point with its state, key metrics and links to its
  rendered notebooks and to the figures; failures highlighted.

Missing or failed points are reported, never fatal; an ablation without a single run directory
is an error (nothing to report).

``detcon figures`` (:func:`build_figures`, ``make figures``) writes the report of every ablation
file whose finished points were exported to ``results/<ablation>/`` (:mod:`detcon.export`),
from that tree alone: figures and CSVs in ``figures/``, the index page in
``results/<ablation>/``; with ``--notebooks`` it executes ``notebooks/report.ipynb`` per
ablation instead (:func:`report_notebook`), keeping the executed copy and its HTML beside the
index page.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pandas as pd
from matplotlib.figure import Figure

from detcon.atomic import atomic_write, write_text
from detcon.grid import Ablation, load_ablation
from detcon.plotting import ablation_figure, mask_quality_figure, training_curves
from detcon.results import (
    REFERENCES,
    AblationScan,
    PlotLayout,
    choose_layout,
    join_labels,
    label_rows,
    load_mask_quality,
    scan_ablation,
)
from detcon.runs import POOL_START_METHOD, init_pool_worker, reused_source

__all__ = [
    "Report",
    "ReportFiles",
    "build_figures",
    "build_report",
    "figure_rows",
    "register_cli",
    "report_notebook",
]

# The grid parameter the mask-quality analysis (paper: "better masks, better transfer") needs.
MASK_SOURCE_KEY = "masks.source"
MASK_QUALITY_FILE = "mask_quality.csv"
_DPI = 150
# Notebooks listed first on the index page (the launcher's two stages), then any other.
_NOTEBOOK_ORDER = ("pretrain", "evaluate")


@dataclass(frozen=True)
class ReportFiles:
    """Paths written by :func:`build_report` (the mask-quality pair is None when not drawn)."""

    figure_png: Path
    figure_pdf: Path
    table_csv: Path
    summary_csv: Path
    curves_png: Path
    status_csv: Path
    index_html: Path
    mask_quality_png: Path | None
    mask_quality_pdf: Path | None

    def written(self) -> list[Path]:
        return [p for p in vars(self).values() if p is not None]


@dataclass(frozen=True)
class Report:
    """The scan (tables), the figure layout chosen for it and the files written."""

    scan: AblationScan
    layout: PlotLayout
    files: ReportFiles


# --------------------------------------------------------------------------- tables -> figures


def figure_rows(scan: AblationScan, layout: PlotLayout) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows the ablation figure plots and its reference rows.

    Returns:
        ``(rows, references)``: the pretrained encoder's downstream metrics of ``done`` points
        (when no point was evaluated: their final pretraining loss instead), labelled with the
        layout's x / hue columns, tasks in the ablation's ``evaluate`` order; and the rows of
        ``done`` points' reference backbones (``random``: the floor, ``supervised``: the
        ceiling).
    """
    done = scan.tidy[scan.tidy["state"] == "done"]
    downstream = done["task"] != "pretrain"
    rows = done[downstream & (done["backbone"] == "pretrained")]
    if rows.empty:
        rows = done[(done["task"] == "pretrain") & (done["metric"] == "final_loss")]
    references = done[downstream & done["backbone"].isin(REFERENCES)]
    # Panels follow the ablation's `evaluate:` order (summary.json's keys are sorted by name); a
    # task named after its kind plus a dataset (e.g. segmentation_voc) ranks with its kind.
    tasks = scan.ablation.evaluate

    def rank(task: str) -> int:
        return next((i for i, kind in enumerate(tasks) if task.startswith(kind)), len(tasks))

    rows = rows.sort_values("task", key=lambda col: col.map(rank), kind="stable")
    return label_rows(rows, layout), references


def _message_figure(text: str) -> Figure:
    """A placeholder with one line of text, so the index page never links to a missing file."""
    fig = Figure(figsize=(6.0, 1.6))
    fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fmt = path.suffix.lstrip(".")
    # No creation date in the PDF: the same results give the same bytes (committed figures).
    metadata = {"CreationDate": None} if fmt == "pdf" else None
    return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=_DPI, metadata=metadata))


def _curves_figure(scan: AblationScan, layout: PlotLayout, title: str) -> Figure:
    if scan.curves.empty:
        return _message_figure("no metrics.jsonl in any run directory yet")
    params = scan.status.drop(columns=["seed", "state", "error", "notebook", "run_dir"])
    curves = scan.curves.merge(params, on="run_id", how="left")
    # Colour by configuration (seeds of one configuration share a colour), keys in grid order;
    # with two or more keys the first is the colour (a method keeps its own) and the rest the
    # dash pattern: sixteen method x length colours could not be told apart.
    shown = {*layout.x_keys, *layout.hue_keys}
    keys = tuple(k for k in scan.param_keys if k in shown) or ("run_id",)

    def label(group: tuple[str, ...]) -> tuple[str, list[str]]:
        """A column joining ``group``'s values, and its values in grid order."""
        name = " / ".join(group)
        curves[name] = join_labels(curves, group)
        present = set(curves[name])
        return name, [o for o in dict.fromkeys(join_labels(scan.status, group)) if o in present]

    hue, hue_order = label(keys[:1])
    style, style_order = label(keys[1:]) if len(keys) > 1 else (None, None)
    return training_curves(
        curves, hue=hue, hue_order=hue_order, style=style, style_order=style_order, title=title
    )


def _mask_quality_rows(
    rows: pd.DataFrame, quality: pd.DataFrame, layout: PlotLayout
) -> tuple[pd.DataFrame, str | None]:
    """Join figure rows with the per-source mask quality; hue: the other varying parameters."""
    joined = rows.assign(source=rows[MASK_SOURCE_KEY].map(str)).merge(
        quality, on="source", how="inner"
    )
    hue_keys = tuple(k for k in (*layout.x_keys, *layout.hue_keys) if k != MASK_SOURCE_KEY)
    if not hue_keys or hue_keys == ("run_id",):
        return joined, None
    hue = " / ".join(hue_keys)
    joined[hue] = join_labels(joined, hue_keys)
    return joined, hue


# --------------------------------------------------------------------------- index page

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed { background: #fde2e2; }
tr.failed td.error { color: #a00; font-family: monospace; }
tr.missing, tr.pending { color: #888; }
tr.running { background: #fff7d6; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def _text(value: object) -> str:
    """A table cell's text, escaped; empty for None / NaN."""
    return (
        ""
        if value is None or (isinstance(value, float) and pd.isna(value))
        else html.escape(str(value))
    )


def _href(target: Path, start: Path) -> str:
    return quote(Path(os.path.relpath(target.resolve(), start.resolve())).as_posix())


def _notebooks(run_dir: Path) -> dict[str, Path]:
    """stem -> the notebook to read in ``run_dir``: its HTML, else the ``.ipynb`` (an exported
    tree keeps only those)."""
    found = {}
    for path in sorted(run_dir.glob("*.ipynb")) + sorted(run_dir.glob("*.html")):
        found[path.stem] = path  # the HTML wins
    return found


def _notebook_links(run_dir: Path, here: Path) -> str:
    """Links (relative to ``here``) to the executed notebooks of a point: its own, and for a
    point that reused another ablation's run (``reused_from``) those it shares with the source
    and that were not copied (``detcon.export.shared_notebooks``)."""
    if not run_dir.is_dir():
        return ""
    found = _notebooks(run_dir)
    source = reused_source(run_dir)
    if source is not None and (run_dir.parent.parent / source).is_dir():
        found = _notebooks(run_dir.parent.parent / source) | found
    stems = [s for s in _NOTEBOOK_ORDER if s in found] + sorted(
        s for s in found if s not in _NOTEBOOK_ORDER
    )
    return " ".join(f'<a href="{_href(found[s], here)}">{html.escape(s)}</a>' for s in stems)


def _key_metrics(scan: AblationScan) -> pd.DataFrame:
    """run_id x "task.metric" table of the pretrained encoder (downstream + final loss)."""
    tidy = scan.tidy[scan.tidy["backbone"] == "pretrained"]
    keep = (tidy["task"] != "pretrain") | (tidy["metric"] == "final_loss")
    tidy = tidy[keep].assign(column=lambda t: t["task"] + "." + t["metric"])
    if tidy.empty:
        return pd.DataFrame(index=pd.Index([], name="run_id"))
    order = list(dict.fromkeys(tidy["column"]))
    table = tidy.pivot_table(index="run_id", columns="column", values="value", aggfunc="first")
    return table[order]


def render_index(scan: AblationScan, files: ReportFiles, *, command: str) -> str:
    """The static HTML of ``<runs>/<ablation>/index.html`` (links relative to that folder)."""
    here = scan.runs_root
    ab = scan.ablation
    esc = html.escape
    counts = ", ".join(f"{n} {s}" for s, n in scan.counts().items())
    metrics = _key_metrics(scan)
    head = ["run id", "state", *scan.param_keys, "seed", *metrics.columns, "notebooks", "error"]
    body = []
    for row in scan.status.to_dict("records"):
        run_id, state = row["run_id"], row["state"]
        cells = [f"<td>{esc(run_id)}</td>", f"<td>{esc(state)}</td>"]
        cells += [f"<td>{_text(row[k])}</td>" for k in (*scan.param_keys, "seed")]
        for col in metrics.columns:
            value = metrics.at[run_id, col] if run_id in metrics.index else None
            shown = "" if value is None or pd.isna(value) else f"{value:.4g}"
            cells.append(f'<td class="num">{shown}</td>')
        cells.append(f"<td>{_notebook_links(Path(row['run_dir']), here)}</td>")
        cells.append(f'<td class="error">{_text(row["error"])}</td>')
        body.append(f'<tr class="{esc(state)}">{"".join(cells)}</tr>')
    links = [
        (files.figure_png, "figure (PNG)"),
        (files.figure_pdf, "PDF"),
        (files.table_csv, "tidy table (CSV)"),
        (files.summary_csv, "mean over seeds (CSV)"),
        (files.curves_png, "training curves"),
        (files.status_csv, "completeness (CSV)"),
        (files.mask_quality_png, "mask quality vs. transfer"),
        # the executed report notebook (`detcon figures --notebooks`), when there is one
        (here / "report.html" if (here / "report.html").is_file() else None, "report notebook"),
    ]
    link_html = " · ".join(
        f'<a href="{_href(p, here)}">{esc(label)}</a>' for p, label in links if p is not None
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(ab.name)} ({esc(scan.profile)})</title><style>{_CSS}</style></head>
<body>
<h1>{esc(ab.name)} <small>(profile {esc(scan.profile)})</small></h1>
<p>{esc(ab.description.strip())}</p>
<p><b>{len(scan.status)} points:</b> {esc(counts)}. Generated by <code>{esc(command)}</code>
(no timestamp: the page regenerates to the same bytes from the same results).</p>
<p>{link_html}</p>
<p><a href="{_href(files.figure_png, here)}"><img src="{_href(files.figure_png, here)}"
alt="{esc(ab.name)} figure"></a></p>
<table>
<thead><tr>{"".join(f"<th>{esc(str(h))}</th>" for h in head)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
</body></html>
"""


# --------------------------------------------------------------------------- the report


def paper_expectations(ablation: str) -> list[str]:
    """The paper's statements this ablation tests (:data:`detcon.claims.CLAIMS`), one line
    each, for the figure: the direction a reader looks for."""
    from detcon.claims import CLAIMS

    return list(
        dict.fromkeys(f"{c.statement} ({c.where})" for c in CLAIMS if c.ablation == ablation)
    )


def stand_in_lines(ablation: Ablation, profile: str) -> list[str]:
    """What the profile's values stand for (``profiles.<profile>.values``), one line per key,
    e.g. ``"at cpu: augment.crop_size 64 for 224, 112 for 384, 144 for 512"``: the paper's
    statements name the paper's values, the axes show the profile's. A value the profile keeps
    (``{1: 1, 128: 8}``: "8 for 128") is left out."""
    lines = []
    for key, mapping in ablation.section(profile).values.items():
        changed = [f"{ours} for {paper}" for paper, ours in mapping.items() if ours != paper]
        if changed:
            lines.append(f"at {profile}: {key} " + ", ".join(changed))
    return lines


def build_report(
    ablation_path: str | Path,
    *,
    profile: str = "cpu",
    runs_dir: str | Path = "runs",
    figures_dir: str | Path = "figures",
    echo: Callable[[str], None] = print,
) -> Report:
    """Scan an ablation's run directories and write its tables, figures and index page.

    Args:
        ablation_path: the ablation file.
        profile: the profile its points ran at.
        runs_dir: the ``--runs-dir`` of ``detcon run`` (points in ``<runs_dir>/<name>/``).
        figures_dir: where figures and CSVs go (``mask_quality.csv`` is read from there too).
        echo: receives the lines saying what was found and where everything is.
    Returns:
        The :class:`Report`.
    Raises:
        FileNotFoundError: the ablation file does not exist, or not one of its points has a run
            directory (nothing was run yet).
        ConfigError: the ablation file is invalid.
        ValueError: ``mask_quality.csv`` lacks a column.
        NotADirectoryError: ``figures_dir`` is an existing file.
    """
    if Path(figures_dir).exists() and not Path(figures_dir).is_dir():
        raise NotADirectoryError(
            f"--figures-dir {str(figures_dir)!r} is an existing file: expected a directory for "
            "the figures and tables (or a path that does not exist yet)"
        )
    scan = scan_ablation(ablation_path, profile=profile, runs_dir=runs_dir)
    name = scan.ablation.name
    if (scan.status["state"] == "missing").all():
        root = Path(scan.runs_root)
        others = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
        others = [d for d in others if not d.startswith(".")]
        if others:  # runs of the ablation's name, none of them a point of the file as it is
            raise FileNotFoundError(
                f"no run of ablation {name!r} at profile {profile!r}: {root} holds "
                f"{len(others)} run directories (e.g. {others[0]}) but none of its "
                f"{len(scan.status)} points: a run id ends with the digest of the resolved "
                "config, so runs no longer match once the ablation file or a default changed "
                "(or they ran at another --profile); check out the commit that produced them "
                "(git_commit in their env.json), or run the file as it is now into a runs folder"
            )
        raise FileNotFoundError(
            f"no run of ablation {name!r} at profile {profile!r}: none of its "
            f"{len(scan.status)} points has a run directory under {scan.runs_root}; run "
            f"`detcon run {ablation_path} --profile {profile} --runs-dir {runs_dir}` first "
            "(or pass the --runs-dir and --profile it was run with)"
        )
    figures = Path(figures_dir)
    layout = choose_layout(scan.status, scan.param_keys)
    title = f"{name} (profile {profile})"

    rows, references = figure_rows(scan, layout)
    for column, order in ((layout.x, layout.x_order), (layout.hue, layout.hue_order or ())):
        stray = set(rows[column]) - set(order) if column and not rows.empty else set()
        if stray:  # seaborn would drop them without a word
            raise RuntimeError(
                f"{name}: the figure's {column} values {sorted(stray)} are not in its order "
                f"{list(order)}: the points would be left out (a labelling bug)"
            )
    if rows.empty:
        fig = _message_figure(f"{title}: no finished point yet ({_counts_text(scan)})")
    else:
        fig = ablation_figure(
            rows,
            x=layout.x,
            order=[o for o in layout.x_order if o in set(rows[layout.x])],
            hue=layout.hue,
            hue_order=layout.hue_order,
            references=references if len(references) else None,
            title=title,
            expected=paper_expectations(name),
            notes=[*stand_in_lines(scan.ablation, profile), *_incomplete_lines(scan)],
        )
    png, pdf = _save(fig, figures / f"{name}.png"), _save(fig, figures / f"{name}.pdf")
    table_csv = write_text(figures / f"{name}.csv", scan.tidy.to_csv(index=False))
    summary = scan.seed_summary().to_csv(index=False)
    summary_csv = write_text(figures / f"{name}_summary.csv", summary)
    curves_png = _save(_curves_figure(scan, layout, title), figures / f"{name}_curves.png")
    status_csv = write_text(figures / f"{name}_status.csv", scan.status.to_csv(index=False))

    mq_png = mq_pdf = None
    quality = load_mask_quality(figures / MASK_QUALITY_FILE)
    if MASK_SOURCE_KEY in scan.param_keys and quality is not None and not rows.empty:
        joined, hue = _mask_quality_rows(rows, quality, layout)
        if joined["source"].nunique() >= 2:
            mq = mask_quality_figure(
                joined,
                hue=hue,
                references=references if len(references) else None,
                title=title,
            )
            mq_png = _save(mq, figures / f"{name}_mask_quality.png")
            mq_pdf = _save(mq, figures / f"{name}_mask_quality.pdf")
        else:
            measured = sorted(set(joined["source"]))
            other = sorted(set(rows[MASK_SOURCE_KEY].map(str)) - set(measured))
            echo(
                f"mask quality figure: not drawn; it needs 2 or more mask sources with a quality "
                f"in {MASK_QUALITY_FILE}, and {name} has {', '.join(measured) or 'none'}"
                + (f" (no quality for {', '.join(other)})" if other else "")
            )
    elif MASK_SOURCE_KEY in scan.param_keys and quality is None and not rows.empty:
        echo(
            f"mask quality figure: not drawn; {figures / MASK_QUALITY_FILE} does not exist "
            f"(`detcon masks quality --profile {profile}"
            + (" --root <coco root>" if profile == "paper" else "")
            + f" --out {figures / MASK_QUALITY_FILE}` writes it)"
        )

    files = ReportFiles(
        png,
        pdf,
        table_csv,
        summary_csv,
        curves_png,
        status_csv,
        scan.runs_root / "index.html",
        mq_png,
        mq_pdf,
    )
    command = (
        f"detcon report {ablation_path} --profile {profile} --runs-dir {runs_dir} "
        f"--figures-dir {figures_dir}"
    )
    write_text(files.index_html, render_index(scan, files, command=command))
    _echo_summary(scan, files, echo)
    return Report(scan, layout, files)


def _incomplete_lines(scan: AblationScan) -> list[str]:
    """A line for the figure when not every point is done: the figure draws done points only,
    so a configuration none of whose points finished would leave it without a word."""
    done = scan.counts().get("done", 0)
    if done == len(scan.status):
        return []
    return [f"{done} of {len(scan.status)} points done ({_counts_text(scan)}): only those drawn"]


def _counts_text(scan: AblationScan) -> str:
    return ", ".join(f"{n} {s}" for s, n in scan.counts().items())


def _echo_summary(scan: AblationScan, files: ReportFiles, echo: Callable[[str], None]) -> None:
    echo(
        f"{scan.ablation.name} (profile {scan.profile}): {len(scan.status)} points: "
        f"{_counts_text(scan)}"
    )
    for row in scan.status.to_dict("records"):
        if row["state"] == "failed":
            where = f" (see {row['notebook']})" if pd.notna(row["notebook"]) else ""
            echo(f"  FAILED {row['run_id']}: {row['error']}{where}")
    missing = scan.status.loc[scan.status["state"] == "missing", "run_id"].tolist()
    if missing:
        echo(f"  missing ({len(missing)}): {', '.join(missing)}")
    echo("wrote:")
    for path in files.written():
        echo(f"  {path}")


# --------------------------------------------------------------------------- every ablation

REPORT_NOTEBOOK = "report"


# What papermill and the kernel write into an executed notebook that changes with every
# execution, not with the results: timings, a random id for the injected parameters cell and the
# temporary path it was executed to.
_VOLATILE = ("start_time", "end_time", "duration")
_INJECTED = "injected-parameters"


def settle_notebook(path: Path, final: Path) -> None:
    """Rewrite the executed notebook ``path`` without what changes between two executions on the
    same results (:data:`_VOLATILE` timings, the kernel's execution timestamps, the injected
    cell's random id; its ``output_path`` becomes ``final``, its ``input_path`` relative), so
    that regenerating a report changes no byte of it when nothing it shows changed, in any
    clone."""
    nb = json.loads(path.read_text())
    papermill = nb.get("metadata", {}).get("papermill", {})
    for key in _VOLATILE:
        papermill.pop(key, None)
    if "output_path" in papermill:
        papermill["output_path"] = str(final)
    if "input_path" in papermill:  # the template, relative: the same in every clone
        papermill["input_path"] = os.path.relpath(papermill["input_path"])
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {})
        meta.pop("execution", None)
        for key in _VOLATILE:
            meta.get("papermill", {}).pop(key, None)
        if _INJECTED in meta.get("tags", []):
            cell["id"] = _INJECTED
    write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def report_notebook(
    ablation_path: str | Path,
    *,
    profile: str = "cpu",
    runs_dir: str | Path = "runs",
    figures_dir: str | Path = "figures",
) -> Path:
    """Execute ``notebooks/report.ipynb`` for an ablation (it calls :func:`build_report`, so it
    writes everything ``detcon report`` writes) into ``<runs_dir>/<ablation>/report.ipynb``, and
    render it to ``report.html`` beside it. Relative paths are taken from the current directory.

    Returns:
        The executed notebook.
    Raises:
        FileNotFoundError: :func:`build_report`'s (no point of the ablation under ``runs_dir``).
        papermill.PapermillExecutionError: another cell failed (nothing is left in ``runs_dir``).
    """
    from detcon.launch.notebooks import execute_notebook, kernel_name, notebook_path, render_html

    name = load_ablation(ablation_path).name
    out = Path(runs_dir) / name / f"{REPORT_NOTEBOOK}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    # papermill saves the notebook after every cell: execute beside it, then rename it into place.
    tmp = out.with_name(f".{out.stem}.{secrets.token_hex(4)}.tmp{out.suffix}")
    parameters = {
        "ablation": str(ablation_path),
        "profile": profile,
        "runs_dir": str(runs_dir),
        "figures_dir": str(figures_dir),
    }
    try:
        execute_notebook(
            notebook_path(REPORT_NOTEBOOK), tmp, parameters, cwd=Path.cwd(), kernel=kernel_name()
        )
        settle_notebook(tmp, out)
        os.replace(tmp, out)
    except Exception as exc:
        if getattr(exc, "ename", None) == "FileNotFoundError":  # build_report's: nothing to read
            raise FileNotFoundError(exc.evalue) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    render_html(out)
    return out


def _report_job(
    job: tuple[Path, str, str, str | Path, str | Path, bool],
) -> tuple[list[str], float, str | None]:
    """One ablation of :func:`build_figures`: (its output lines, seconds, error or None)."""
    path, name, profile, results_dir, figures_dir, notebooks = job
    began = time.perf_counter()
    lines: list[str] = []
    try:
        if notebooks:
            out = report_notebook(
                path, profile=profile, runs_dir=results_dir, figures_dir=figures_dir
            )
            lines.append(f"wrote {out} and {out.with_suffix('.html')}")
        # Also after the notebook, whose kernel writes the same files with the paths it was
        # given: the committed figures and index page are then the same bytes either way.
        build_report(
            path,
            profile=profile,
            runs_dir=results_dir,
            figures_dir=figures_dir,
            echo=lines.append,
        )
    except FileNotFoundError as exc:  # no exported point is a point of the file any more
        return lines, time.perf_counter() - began, str(exc)
    return lines, time.perf_counter() - began, None


def default_jobs() -> int:
    """Reports drawn side by side by :func:`build_figures`: the CPUs usable, at most 2.

    The CPUs this process may run on where the OS says (Linux's affinity mask), else all of them
    (macOS has no ``os.sched_getaffinity``)."""
    usable = getattr(os, "sched_getaffinity", None)
    return max(1, min(2, len(usable(0)) if usable else os.cpu_count() or 1))


def build_figures(
    *,
    ablations_dir: str | Path = "ablations",
    results_dir: str | Path = "results",
    figures_dir: str | Path = "figures",
    profile: str = "cpu",
    notebooks: bool = False,
    jobs: int | None = None,
    echo: Callable[[str], None] = print,
) -> list[str]:
    """The report of every ablation file of ``ablations_dir`` whose results were exported to
    ``<results_dir>/<name>/`` (``detcon export``), read from that tree alone.

    Args:
        notebooks: also execute ``notebooks/report.ipynb`` per ablation into
            ``<results_dir>/<name>/report.ipynb`` and ``.html`` (:func:`report_notebook`; it
            writes the report itself: a kernel start per ablation, seconds each).
        jobs: ablations drawn side by side, in forked processes (default
            :func:`default_jobs`; 1: one after the other in this process). Drawing is CPU-bound:
            two processes on two cores halve the time of a study.
        echo: receives the progress lines and each report's summary, ablation by ablation.
    Returns:
        The names of the ablations reported, in file order.
    Raises:
        FileNotFoundError: no ablation file, or none with a results folder, or (after the others
            were reported) a results folder without any point of its ablation file.
        ValueError: ``jobs`` < 1.
    """
    start = time.perf_counter()
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs {jobs}: expected the number of processes, 1 or more")
    files = sorted(Path(ablations_dir).glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no ablation file (*.yaml) in {str(ablations_dir)!r}")
    todo = [(path, load_ablation(path).name) for path in files]
    todo = [(path, name) for path, name in todo if (Path(results_dir) / name).is_dir()]
    if not todo:
        raise FileNotFoundError(
            f"no exported results: none of the {len(files)} ablations of {ablations_dir} has a "
            f"folder in {results_dir}; export finished runs first with `detcon export "
            f"ABLATION.yaml --profile {profile} --to {results_dir}`"
        )
    jobs = min(default_jobs() if jobs is None else jobs, len(todo))
    echo(f"{len(todo)} exported ablations in {results_dir}, {jobs} at a time")
    work = [(path, name, profile, results_dir, figures_dir, notebooks) for path, name in todo]
    with contextlib.ExitStack() as stack:
        if jobs > 1:
            import multiprocessing

            import seaborn  # noqa: F401  (forked workers inherit it; spawned ones import it)

            context = multiprocessing.get_context(POOL_START_METHOD)
            pool = stack.enter_context(context.Pool(jobs, initializer=init_pool_worker))
            results = pool.imap(_report_job, work)
        else:
            results = map(_report_job, work)
        reported, unreadable = [], []
        for i, ((_, name), (lines, seconds, error)) in enumerate(zip(todo, results), 1):
            for line in lines:
                echo(f"  {line}")
            if error is None:
                reported.append(name)
                echo(f"[{i}/{len(todo)}] {name} done ({seconds:.1f} s)")
            else:
                unreadable.append(name)
                echo(f"[{i}/{len(todo)}] {name} FAILED: {error}")
    echo(
        f"{len(reported)} reports from {results_dir} in {time.perf_counter() - start:.1f} s: "
        f"figures in {figures_dir}, index pages {results_dir}/<ablation>/index.html"
    )
    if unreadable:
        raise FileNotFoundError(
            f"no exported point of {', '.join(unreadable)} is a point of its ablation file at "
            f"profile {profile!r}: a run id ends with the digest of the resolved config, so an "
            "export no longer matches once the ablation or a default changed; re-export runs of "
            "this code, or check out the commit that produced them (git_commit in "
            f"{results_dir}/<ablation>.csv)"
        )
    return reported


def _cmd_report(args: argparse.Namespace) -> int:
    build_report(
        args.ablation,
        profile=args.profile,
        runs_dir=args.runs_dir,
        figures_dir=args.figures_dir,
        echo=lambda line: print(line, flush=True),
    )
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    build_figures(
        ablations_dir=args.ablations_dir,
        results_dir=args.results_dir,
        figures_dir=args.figures_dir,
        profile=args.profile,
        notebooks=args.notebooks,
        jobs=args.jobs,
        echo=lambda line: print(line, flush=True),
    )
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``detcon report`` and ``detcon figures`` (called by :mod:`detcon.cli`)."""
    from detcon.cli import path_arg
    from detcon.config import available_profiles

    p = subparsers.add_parser(
        "report",
        help="tables, figures and the index page of an ablation's runs",
        description="Scan the run directories of ABLATION's points and write the tidy table "
        "and figure (figures/<ablation>.{csv,png,pdf}), training curves, the completeness "
        "table and <runs-dir>/<ablation>/index.html. Missing and failed points are listed, "
        "not fatal.",
    )
    p.add_argument("ablation", type=path_arg, help="ablation file, e.g. ablations/mask_type.yaml")
    p.add_argument(
        "--profile",
        choices=available_profiles(),
        default="cpu",
        help="the profile the points ran at (run ids depend on it; default: cpu)",
    )
    p.add_argument(
        "--runs-dir",
        type=path_arg,
        default=Path("runs"),
        help="the --runs-dir of `detcon run` (default: runs)",
    )
    p.add_argument(
        "--figures-dir",
        type=path_arg,
        default=Path("figures"),
        help="where figures and CSVs go; mask_quality.csv is read from here (default: figures)",
    )
    p.set_defaults(func=_cmd_report)

    p = subparsers.add_parser(
        "figures",
        help="the reports of every exported ablation, from results/ alone (make figures)",
        description="For every ablation file in ABLATIONS_DIR whose results were exported to "
        "RESULTS_DIR/<ablation>/ (`detcon export`), write what `detcon report --runs-dir "
        "RESULTS_DIR` writes: figures and CSVs in FIGURES_DIR, RESULTS_DIR/<ablation>/index.html. "
        "Needs no run directory.",
    )
    p.add_argument(
        "--profile",
        choices=available_profiles(),
        default="cpu",
        help="the profile the exported points ran at (default: cpu)",
    )
    p.add_argument(
        "--ablations-dir",
        type=path_arg,
        default=Path("ablations"),
        help="the ablation files (default: ablations)",
    )
    p.add_argument(
        "--results-dir",
        type=path_arg,
        default=Path("results"),
        help="the tree `detcon export` wrote (default: results)",
    )
    p.add_argument(
        "--figures-dir",
        type=path_arg,
        default=Path("figures"),
        help="where figures and CSVs go; mask_quality.csv is read from here (default: figures)",
    )
    p.add_argument(
        "--notebooks",
        action="store_true",
        help="also execute notebooks/report.ipynb per ablation into "
        "RESULTS_DIR/<ablation>/report.ipynb and .html (a kernel start each: slower)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="ablations drawn side by side (default: the CPUs usable, at most 2)",
    )
    p.set_defaults(func=_cmd_figures)
