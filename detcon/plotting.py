"""Figures of the DetCon ablation lab (DESIGN §1, §3: ``figures/<name>.{png,pdf}``).

Every function builds and returns a :class:`matplotlib.figure.Figure` without touching pyplot's
global state (safe in notebooks, tests and headless cluster jobs); the caller saves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = ["scene_gallery"]

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
