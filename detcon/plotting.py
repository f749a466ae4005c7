"""Figures of the DetCon ablation lab (docs/design.md §1, §2.5: ``figures/<name>.{png,pdf}``).

Every function builds and returns a :class:`matplotlib.figure.Figure` without touching pyplot's
global state (safe in notebooks, tests and headless cluster jobs); the caller saves it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

if TYPE_CHECKING:  # pandas/seaborn are imported by the figure functions that need them
    import pandas as pd

__all__ = ["ablation_figure", "mask_quality_figure", "scene_gallery", "training_curves"]

# Fixed class colours (background black), so a class has the same colour in every figure.
_CLASS_COLORS = (
    "#000000",
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#7f7f7f",
)


def _instance_colormap(num_ids: int) -> ListedColormap:
    """Black for id 0, then well-separated hues (golden-ratio steps) for ids 1..num_ids."""
    hues = (np.arange(num_ids) * 0.618034) % 1.0
    from matplotlib.colors import hsv_to_rgb  # local: only this helper needs it

    rgb = hsv_to_rgb(np.stack([hues, np.full(num_ids, 0.75), np.full(num_ids, 0.95)], 1))
    return ListedColormap(np.concatenate([np.zeros((1, 3)), rgb]))


def scene_gallery(dataset: Any, indices: Sequence[int], *, panel_inches: float = 1.6) -> Figure:
    """One row per scene: image, instance ids, semantic classes, depth.

    Args:
        dataset: a dataset whose items are dicts with ``image`` (uint8 (3, H, W)), ``instances``
            and ``semantic`` (int (H, W)) and ``depth`` (float (H, W)) tensors, and which has
            ``class_names`` (e.g. :class:`detcon.data.synthetic.SyntheticScenes`).
        indices: the scenes to show, top to bottom.
        panel_inches: side of one panel.
    Returns:
        The figure (4 image axes per row), with a legend of the semantic classes.
    """
    if len(indices) == 0:
        raise ValueError("indices is empty: expected at least one scene index")
    class_names = list(dataset.class_names)
    if len(class_names) > len(_CLASS_COLORS):
        raise ValueError(
            f"{len(class_names)} classes: scene_gallery has colours for at most "
            f"{len(_CLASS_COLORS)}"
        )
    samples = [dataset[i] for i in indices]
    depth_lo = min(float(s["depth"].min()) for s in samples)
    depth_hi = max(float(s["depth"].max()) for s in samples)
    max_id = max(int(s["instances"].max()) for s in samples)
    inst_cmap = _instance_colormap(max(max_id, 1))
    sem_cmap = ListedColormap(_CLASS_COLORS[: len(class_names)])

    rows = len(samples)
    fig = Figure(figsize=(4 * panel_inches, rows * panel_inches + 0.9), layout="constrained")
    axes = fig.subplots(rows, 4, squeeze=False)
    titles = ("image", "instances", "semantic", "depth (near = bright)")
    for r, (index, sample) in enumerate(zip(indices, samples)):
        panels = (
            (sample["image"].permute(1, 2, 0).numpy(), {}),
            (sample["instances"].numpy(), {"cmap": inst_cmap, "vmin": 0, "vmax": max(max_id, 1)}),
            (
                sample["semantic"].numpy(),
                {"cmap": sem_cmap, "vmin": 0, "vmax": len(class_names) - 1},
            ),
            (sample["depth"].numpy(), {"cmap": "magma_r", "vmin": depth_lo, "vmax": depth_hi}),
        )
        for c, (array, style) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(array, interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
        n = int(sample["instances"].max())
        axes[r, 0].set_ylabel(f"#{index} ({n} obj.)", fontsize=7)
    handles = [Patch(facecolor=_CLASS_COLORS[i], label=name) for i, name in enumerate(class_names)]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(5, len(handles)),
        fontsize=7,
        frameon=False,
    )
    return fig


# --------------------------------------------------------------------------- ablation figures
# These take the tidy tables of :mod:`detcon.results` (one row per run x metric) and plot one
# panel per (task, metric). Styling goes through seaborn's style *contexts*, which restore
# matplotlib's rcParams on exit, so nothing leaks into the caller's later figures.

# Metrics for which smaller is better; every other metric reads "higher is better".
_LOWER_IS_BETTER = frozenset({"rmse", "abs_rel", "final_loss", "loss", "wall_s"})
# The reference lines of an ablation panel, per reference backbone (detcon.results.REFERENCES):
# legend label and style, distinct so the floor and the ceiling are told apart in greyscale too.
_REFERENCE_LINES = {
    "random": ("random init (floor)", {"color": "0.35", "linestyle": "--", "linewidth": 1.0}),
    "supervised": ("supervised (ceiling)", {"color": "0.1", "linestyle": "-.", "linewidth": 1.0}),
}
# Margin of a panel's y axis around its data and reference lines, as a fraction of their span.
_Y_MARGIN = 0.08
# One colour per method and per mask source in every figure where they are the colour (matplotlib's
# default cycle, in the order the shipped ablations used them): DetCon-B is orange everywhere.
_METHOD_COLORS = {"detcon_s": "C0", "detcon_b": "C1", "simclr": "C2", "byol": "C3"}
_SOURCE_COLORS = {
    "fh": "C0",
    "mcg": "C1",
    "ground_truth": "C2",
    "grid": "C4",
    "image": "C5",
    "external": "C6",
}


def _metric_title(task: str, metric: str) -> str:
    """``segmentation: miou ↑`` (the arrow points to better values; short, so that titles fit
    a panel)."""
    return f"{task}: {metric} {'↓' if metric in _LOWER_IS_BETTER else '↑'}"


def _axis_label(column: str, width: int = 30) -> str:
    """A column name as an axis label: the keys of a combined column (``a / b``) one a line when
    they would not fit under a panel."""
    return column.replace(" / ", " /\n") if len(column) > width else column


def _check_columns(data: pd.DataFrame, columns: Sequence[str | None], what: str) -> None:
    missing = [c for c in columns if c is not None and c not in data.columns]
    if missing:
        raise ValueError(
            f"{what}: missing column(s) {', '.join(map(repr, missing))}; the table has "
            f"{', '.join(map(repr, data.columns))}"
        )
    if data.empty:
        raise ValueError(f"{what}: the table is empty, expected at least one row")


def _panel_grid(
    n: int, *, width: float, height: float, extra_height: float, max_cols: int = 3
) -> tuple[Figure, list[Any]]:
    """A constrained-layout figure with ``n`` visible axes, at most ``max_cols`` per row."""
    cols = min(n, max_cols)
    rows = -(-n // cols)
    fig = Figure(figsize=(cols * width, rows * height + extra_height), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _legend_below(fig: Figure, handles: list[Any], labels: list[str], title: str | None) -> None:
    """One figure legend under the panels, as many columns as fit the figure's width (the
    figure grows by a line per extra row, so long labels never run off the page)."""
    if not handles:
        return
    # ~0.075 in per character at the paper context's legend size, plus the marker and padding.
    entry_inches = 0.075 * max(len(label) for label in labels) + 0.6
    ncol = max(1, min(len(handles), int(fig.get_figwidth() // entry_inches)))
    rows = -(-len(handles) // ncol)
    fig.set_figheight(fig.get_figheight() + 0.2 * (rows - 1))
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, title=title, frameon=False)


def _palette(levels: Sequence[Any]) -> list[Any]:
    """Colours for the hue ``levels``: the fixed ones of methods or of mask sources when the
    levels are all one or the other, so that a method keeps its colour from figure to figure;
    otherwise seaborn's default cycle in the levels' order."""
    import seaborn as sns

    names = [str(level) for level in levels]
    for fixed in (_METHOD_COLORS, _SOURCE_COLORS):
        if names and all(name in fixed for name in names):
            return [fixed[name] for name in names]
    return sns.color_palette(n_colors=len(names))


def _reference_levels(
    ax: Any, references: pd.DataFrame | None, task: str, metric: str, drawn: set[str]
) -> list[float]:
    """Draw the floor's and the ceiling's lines of one panel (``references``: rows ``backbone,
    task, metric, value``); returns their levels and adds the backbones drawn to ``drawn``."""
    levels: list[float] = []
    if references is None:
        return levels
    ref = references[(references["task"] == task) & (references["metric"] == metric)]
    for backbone, (_, style) in _REFERENCE_LINES.items():
        values = ref.loc[ref["backbone"] == backbone, "value"]
        if len(values):
            levels.append(float(values.mean()))
            ax.axhline(levels[-1], **style)
            drawn.add(backbone)
    return levels


def _check_references(references: pd.DataFrame | None, what: str) -> None:
    if references is None:
        return
    _check_columns(references, ("backbone", "task", "metric", "value"), "references")
    unknown = sorted(set(references["backbone"]) - set(_REFERENCE_LINES))
    if unknown:
        raise ValueError(
            f"{what}: references hold backbone(s) {', '.join(map(repr, unknown))}; "
            f"expected {' or '.join(map(repr, _REFERENCE_LINES))}"
        )


def _with_reference_legend(
    handles: list[Any], labels: list[str], drawn: set[str]
) -> tuple[list[Any], list[str]]:
    import matplotlib.lines as mlines

    handles, labels = list(handles), list(labels)
    for backbone, (label, style) in _REFERENCE_LINES.items():
        if backbone in drawn:
            handles.append(mlines.Line2D([], [], **style))
            labels.append(label)
    return handles, labels


def _headline(fig: Figure, lines: Sequence[str], indent: str = "") -> None:
    """The figure's title lines, each wrapped to the figure's width (about 13 characters per inch
    at 9 pt), ``indent`` before a wrapped line's continuation."""
    width = max(40, int(fig.get_figwidth() * 13))

    def keep_citation(line: str) -> str:
        # "... (paper abstract, Fig. 1)": a line's closing citation is never split (no-break
        # spaces: textwrap breaks at ASCII whitespace only; matplotlib draws them as spaces)
        head, sep, cite = line.rpartition(" (")
        if sep and cite.endswith(")") and "(" not in cite and len(cite) < width // 2:
            return head + sep + cite.replace(" ", "\u00a0")
        return line

    text = [textwrap.fill(keep_citation(line), width, subsequent_indent=indent) for line in lines]
    fig.suptitle("\n".join(text), fontsize=9)


def _span_y(ax: Any, values: Sequence[float]) -> None:
    """Fit ``ax``'s y axis to ``values`` (a panel's seeds and reference levels) plus a margin, so
    the floor and the ceiling stay on the panel however far they are from the points. (The
    bootstrap CI of a mean lies within its seeds' range, so the bars fit as well.)"""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = _Y_MARGIN * (hi - lo) or 0.05 * max(abs(hi), 1.0)
    ax.set_ylim(lo - pad, hi + pad)


def _take_legend(ax: Any) -> tuple[list[Any], list[str]]:
    """Handles and labels of the legend seaborn drew on ``ax``, removing it from the panel."""
    legend = ax.get_legend()
    if legend is None:
        return [], []
    handles = list(legend.legend_handles)
    labels = [t.get_text() for t in legend.get_texts()]
    legend.remove()
    return handles, labels


def ablation_figure(
    data: pd.DataFrame,
    *,
    x: str,
    order: Sequence[str],
    hue: str | None = None,
    hue_order: Sequence[str] | None = None,
    references: pd.DataFrame | None = None,
    title: str = "",
    expected: Sequence[str] = (),
    notes: Sequence[str] = (),
    panel_inches: float = 2.8,
) -> Figure:
    """One panel per (task, metric): mean over seeds with a 95% bootstrap CI, and every seed,
    between the reference lines of the random-init floor and the supervised ceiling.

    Args:
        data: tidy rows of finished runs, columns ``task``, ``metric``, ``value`` (float),
            ``x`` and ``hue`` (strings; :func:`detcon.results.label_rows`). Several rows with
            the same (task, metric, x, hue) are the seeds.
        x: the categorical column on the x axis; ``order``: its values, left to right.
        hue: a second varying parameter (colour), or None; ``hue_order``: its values.
        references: rows ``backbone, task, metric, value`` of the reference backbones
            (``random``: the floor, ``supervised``: the ceiling); each panel gets one horizontal
            line per backbone at their mean, in its own style, and a y axis spanning the lines
            and the points.
        title: figure title.
        expected: what the paper reports for this comparison, one line each (e.g. "DetCon-B
            transfers better than BYOL"), printed under the title: the direction to look for.
        notes: further lines under those, as they are (e.g. what the axis values stand for).
        panel_inches: width of one panel.
    Returns:
        The figure; panels in the order (task, metric) first appear in ``data``. Error bars are
        seaborn's bootstrap CI (``errorbar=("ci", 95)``, fixed ``seed=0`` so the figure is
        reproducible); with one seed per point there is no bar.
    """
    import seaborn as sns

    _check_columns(data, ("task", "metric", "value", x, hue), "ablation_figure")
    _check_references(references, "ablation_figure")
    if hue is not None and not hue_order:
        raise ValueError("ablation_figure: hue given without hue_order")
    panels = list(dict.fromkeys(zip(data["task"], data["metric"])))
    n_hue = len(hue_order) if hue is not None and hue_order else 1
    # Put the mean on its seeds: stripplot(dodge=True) spreads hue levels over 0.8 of a
    # category, with centres (n-1)/n * 0.8 apart end to end; pointplot's dodge is that span.
    dodge: float | bool = 0.8 * (n_hue - 1) / n_hue if n_hue > 1 else False
    # Long or many labels would run into each other under a 2.8-inch panel.
    rotate = max(len(str(o)) for o in order) > 8 or sum(len(str(o)) + 2 for o in order) > 30
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig, axes = _panel_grid(
            len(panels),
            width=max(panel_inches, 0.45 * len(order) * max(n_hue, 2) ** 0.5),
            height=2.5 + (0.5 if rotate else 0.0),
            extra_height=0.5
            + 0.2 * (bool(title) + len(expected) + len(notes))
            + (0.15 if title else 0.0),
        )
        palette = _palette(hue_order or []) if hue is not None else None
        legend: tuple[list[Any], list[str]] = ([], [])
        drawn: set[str] = set()  # reference backbones with a line on some panel
        for i, (ax, (task, metric)) in enumerate(zip(axes, panels)):
            sub = data[(data["task"] == task) & (data["metric"] == metric)]
            common: dict[str, Any] = {"data": sub, "x": x, "y": "value", "order": list(order)}
            if hue is not None:
                common |= {"hue": hue, "hue_order": list(hue_order or []), "palette": palette}
            seeds_color = None if hue is not None else "0.55"
            # seaborn jitters the seeds' dots with NumPy's global RNG: seed it (and restore it)
            # so the same results draw the same figure.
            rng_state = np.random.get_state()  # noqa: NPY002 (seaborn draws from it)
            np.random.seed(i)  # noqa: NPY002
            sns.stripplot(
                **common,
                ax=ax,
                dodge=hue is not None,
                jitter=0.08,
                size=3.5,
                alpha=0.6,
                color=seeds_color,
                legend=False,
            )
            np.random.set_state(rng_state)  # noqa: NPY002
            sns.pointplot(
                **common,
                ax=ax,
                dodge=dodge,
                errorbar=("ci", 95),
                seed=0,
                linestyle="none",
                markers="D",
                markersize=5,
                capsize=0.12,
                err_kws={"linewidth": 1.3},
                color=None if hue is not None else "C0",
                legend=hue is not None and i == 0,
            )
            levels = _reference_levels(ax, references, task, metric, drawn)
            _span_y(ax, [*sub["value"], *levels])
            if i == 0:
                legend = _take_legend(ax)
            ax.set_title(_metric_title(task, metric), fontsize=8)
            ax.set_ylabel(metric)
            ax.set_xlabel(_axis_label(x))
            if rotate:
                ax.tick_params(axis="x", labelrotation=30)
                for label in ax.get_xticklabels():
                    label.set_horizontalalignment("right")
        handles, labels = _with_reference_legend(*legend, drawn)
        _legend_below(fig, handles, labels, hue)
        note = (
            "diamonds: mean over seeds with 95% bootstrap CI; dots: individual seeds; "
            "↑/↓: higher/lower is better"
        )
        head = [title] if title else []
        head += [f"paper: {line}" for line in expected] + list(notes)
        _headline(fig, [*head, note], indent="  ")
    return fig


def training_curves(
    curves: pd.DataFrame,
    *,
    hue: str | None = None,
    hue_order: Sequence[str] | None = None,
    style: str | None = None,
    style_order: Sequence[str] | None = None,
    title: str = "",
    panel_inches: float = 3.6,
) -> Figure:
    """Loss and the collapse indicator against the step, one line per run.

    Args:
        curves: one row per run x logged step (:func:`detcon.results.read_curves`): columns
            ``run_id``, ``step`` and at least one of ``loss``, ``normalized_proj_std`` (the std
            over the batch of the l2-normalised projections, averaged over dimensions: it falls
            to 0 when the representation collapses).
        hue: the column colouring the runs (a configuration label; seeds of one configuration
            share a colour); None colours by ``run_id``.
        hue_order: its values in legend order; methods and mask sources keep their colours
            of every other figure.
        style: a second column, drawn as the line's dash pattern (e.g. the schedule's length
            beside the method), or None.
        style_order: its values in legend order.
        title: figure title.
    Returns:
        The figure, one panel per curve column that holds data.
    """
    import seaborn as sns

    _check_columns(curves, ("run_id", "step", hue, style), "training_curves")
    present = ("loss", "normalized_proj_std")
    columns = [c for c in present if c in curves and curves[c].notna().any()]
    if not columns:
        raise ValueError("training_curves: neither 'loss' nor 'normalized_proj_std' has a value")
    colour = hue or "run_id"
    order = list(hue_order) if hue_order else list(dict.fromkeys(curves[colour]))
    ylabels = {
        "loss": "training loss",
        "normalized_proj_std": "std of normalised projections\n(0 = collapsed)",
    }
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig, axes = _panel_grid(
            len(columns), width=panel_inches, height=2.6, extra_height=0.6 + 0.15 * len(order) / 5
        )
        legend: tuple[list[Any], list[str]] = ([], [])
        for i, (ax, col) in enumerate(zip(axes, columns)):
            sns.lineplot(
                data=curves,
                x="step",
                y=col,
                hue=colour,
                hue_order=order,
                palette=_palette(order) if hue else None,
                style=style,
                style_order=list(style_order) if style_order else None,
                units="run_id",
                estimator=None,
                linewidth=1.0,
                alpha=0.85,
                ax=ax,
                legend=i == 0,
            )
            if i == 0:
                legend = _take_legend(ax)
            ax.set_ylabel(ylabels[col])
            ax.set_title(_metric_title("pretrain", col).rstrip(" ↑"), fontsize=8)
        _legend_below(fig, *legend, None if style else colour)
        if title:
            fig.suptitle(title, fontsize=9)
    return fig


def mask_quality_figure(
    data: pd.DataFrame,
    *,
    quality: str = "mean_best_iou",
    hue: str | None = None,
    hue_order: Sequence[str] | None = None,
    references: pd.DataFrame | None = None,
    title: str = "",
    panel_inches: float = 2.8,
) -> Figure:
    """Downstream metric against the quality of the pretraining masks (the paper's "better
    masks, better transfer"), one point per mask source (per ``hue`` value).

    Args:
        data: tidy rows of finished runs with columns ``source`` (the mask source), ``quality``
            (its mask quality in [0, 1], e.g. the mean best IoU with ground-truth objects),
            ``task``, ``metric``, ``value``; the rows of one source are its seeds.
        quality: the mask-quality column on the x axis.
        hue: a further varying parameter (e.g. ``method``): one line per value; or None.
        hue_order: its values.
        references: the floor's and the ceiling's rows, as for :func:`ablation_figure`.
        title: figure title.
    Returns:
        The figure: per panel, seeds as faint dots, the mean per source with a 95% bootstrap CI,
        joined in order of quality, each source named under its x position, the floor and the
        ceiling as lines, and in the panel title the Spearman (rank) correlation of the
        per-source means with quality (3 or more sources; the claims' measure), one per line
        (``hue`` value), never pooled over them.
    """
    import seaborn as sns

    from detcon.claims import spearman  # the claims' measure of the same relation

    _check_columns(data, ("source", quality, "task", "metric", "value", hue), "mask_quality")
    _check_references(references, "mask_quality_figure")
    panels = list(dict.fromkeys(zip(data["task"], data["metric"])))
    common: dict[str, Any] = {"x": quality, "y": "value"}
    levels_order: list[Any] = []
    if hue is not None:
        levels_order = list(hue_order or dict.fromkeys(data[hue]))
        common |= {"hue": hue, "hue_order": levels_order, "palette": _palette(levels_order)}
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig, axes = _panel_grid(
            len(panels), width=panel_inches, height=2.6, extra_height=0.7 + 0.3 * bool(title)
        )
        legend: tuple[list[Any], list[str]] = ([], [])
        drawn: set[str] = set()
        for i, (ax, (task, metric)) in enumerate(zip(axes, panels)):
            sub = data[(data["task"] == task) & (data["metric"] == metric)]
            sns.scatterplot(data=sub, **common, ax=ax, s=10, alpha=0.35, legend=False)
            sns.lineplot(
                data=sub,
                **common,
                ax=ax,
                errorbar=("ci", 95),
                seed=0,
                err_style="bars",
                marker="o",
                markersize=5,
                linewidth=1.0,
                legend=hue is not None and i == 0,
                err_kws={"capsize": 2},
            )
            levels = _reference_levels(ax, references, task, metric, drawn)
            _span_y(ax, [*sub["value"], *levels])
            # each source named on a top axis at its quality, clear of the lines and the bars
            qualities = sub.groupby("source", sort=False)[quality].first().sort_values()
            top = ax.secondary_xaxis("top")
            top.set_xticks(list(qualities), labels=[str(s) for s in qualities.index])
            top.tick_params(labelsize=6, length=2, pad=1, labelcolor="0.25")
            lines = (
                [(lv, sub[sub[hue] == lv]) for lv in levels_order if (sub[hue] == lv).any()]
                if hue is not None
                else [(None, sub)]
            )
            found = []
            for level, rows in lines:
                means = rows.groupby("source", sort=False).agg(
                    q=(quality, "first"), value=("value", "mean")
                )
                if len(means) >= 3 and means["q"].std() > 0 and means["value"].std() > 0:
                    r = float(spearman(means["q"].to_numpy(), means["value"].to_numpy())[0])
                    found.append(f"{level} {r:.2f}" if level is not None else f"{r:.2f}")
                    n_sources = len(means)
            heading = _metric_title(task, metric)
            if found:
                heading += f"\nSpearman ρ over {n_sources} sources:\n" + textwrap.fill(
                    ", ".join(found), max(30, int(panel_inches * 14))
                )
            ax.set_title(heading, fontsize=8)
            ax.set_xlabel(f"mask quality ({quality})")
            ax.set_ylabel(metric)
            if i == 0:
                legend = _take_legend(ax)
        _legend_below(fig, *_with_reference_legend(*legend, drawn), hue)
        note = "points: mean over seeds with 95% bootstrap CI; dots: individual seeds"
        _headline(fig, [*([title] if title else []), note])
    return fig
