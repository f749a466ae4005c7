"""Ablation files -> validated grid points -> stable run ids.

An ablation file (``ablations/<name>.yaml``) is data only::

    name: mask_type                  # must equal the file name; runs go to <runs>/<name>/<run_id>/
    description: ...                 # required: the paper table/figure it reproduces
    notebook: pretrain               # notebooks/<notebook>.ipynb runs each point (default)
    parameters:                      # extra notebook parameters, checked against the notebooks
      evaluate: {random_baseline: true}   # stages: pretrain (the notebook above), evaluate
    seeds: [0, 1, 2]                 # every grid point is run once per seed
    base: {optim.epochs: 100}        # dotted config overrides common to all points
    grid:                            # grid algebra over dotted config keys (below)
      product: {method: [detcon_s, detcon_b], masks.source: [grid, fh, mcg, ground_truth],
                augment.crop_size: [224]}
    profiles:                        # per-profile settings (profile names: detcon/profiles/*.yaml)
      cpu:
        overrides: {}                # dotted overrides for this profile
        values: {augment.crop_size: {224: 64}}   # grid values in paper terms -> this scale
        seeds: [0]                   # optional: other seeds at this scale
        cluster: local               # optional: cluster profile for this scale
    evaluate: [segmentation, depth]  # downstream tasks run after pretraining
    cluster: gpu-32                  # ablations/clusters/<cluster>.yaml (resources live there)

Grid algebra: a node is a mapping with exactly one key,

- ``product: {key: [v1, v2], ...}`` axes, or ``product: [node, ...]`` the Cartesian product of
  sub-grids (sub-grids must not set the same key);
- ``zip: {key: [...], ...}`` equal-length axes walked together, or ``zip: [node, ...]``;
- ``union: [node, ...]`` the points of each arm, one after the other;
- ``point: {key: value, ...}`` one point (``point: {}`` is the base config itself).

Keys are dotted config keys (``masks.source``), or ``notebook.<name>``: a parameter of the
point's pretraining notebook that differs between points (``notebook.official_checkpoint:
data/official/resnet50_detcon_b_imagenet_1k.npy`` makes a point import the release's weights
instead of training; other constant ones go under ``parameters.pretrain``, which refuses
``official_checkpoint`` there: it changes what the point's weights are). Such parameters are part
of the run id, like config keys. Nested mappings are flattened, so
``{masks: {source: fh}}`` is the same as ``{masks.source: fh}``. Config values that are lists
(``augment.crop_scale: [0.2, 1.0]``) are written as such inside axes: an axis is always a list of
values (one value of such a key: ``augment.crop_scale: [[0.2, 1.0]]``).

Run ids (:func:`run_id`) read like the point (``detcon_b-fh-s0``) and end with a hash of the
resolved config, so they are unique, stable across launches and never reused for another config.
The hash shown is the first 6 hex digits of the config's SHA-256, more only for points of the
ablation whose 6 digits coincide; a point's identity (duplicates, run-directory reuse) is the
full digest (:func:`config_digest`), recorded in ``point.json``.

Precedence, lowest first: the profile's defaults (``detcon/profiles/<profile>.yaml``), ``base``,
``profiles.<profile>.overrides``, the point's grid parameters (after ``values``), its seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detcon.config import (
    ConfigError,
    PretrainConfig,
    available_profiles,
    did_you_mean,
    identity_dict,
    load_pretrain_config,
    load_yaml,
)

__all__ = [
    "Ablation",
    "GridPoint",
    "config_digest",
    "ProfileSection",
    "expand",
    "expand_grid",
    "flatten",
    "NOTEBOOK_PREFIX",
    "load_ablation",
    "nest",
    "resolve_config",
    "run_id",
    "select_points",
    "short_digests",
]

COMBINATORS = ("product", "zip", "union", "point")
_TOP_KEYS = (
    "name",
    "description",
    "notebook",
    "parameters",
    "seeds",
    "base",
    "grid",
    "profiles",
    "evaluate",
    "cluster",
)
_PROFILE_KEYS = ("overrides", "values", "seeds", "cluster")
# Notebook stages of a point whose parameters an ablation may extend.
_STAGES = ("pretrain", "evaluate")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Short prefixes for numeric run-id tokens of common ablation keys (others use the key's last
# part): `px224` reads better than `crop_size224`, `k1` than `num_samples1`.
_TOKEN_PREFIX = {
    "seed": "s",
    "augment.crop_size": "px",
    "masks.num_samples": "k",
    "loss.negative_groups": "g",
    "masks.grid_size": "grid",
}
_MAX_LABEL = 80
# Hex digits of the config digest shown in a run id (more where two points share them).
_SHORT_DIGEST = 6
# Grid keys under this prefix are per-point notebook parameters, not config keys.
NOTEBOOK_PREFIX = "notebook."


# --------------------------------------------------------------------------- dotted keys


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"masks": {"source": "fh"}, "seed": 0}`` -> ``{"masks.source": "fh", "seed": 0}``.

    Config leaves are never mappings (sequences stay lists), so flattening is unambiguous.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"config key {prefix}{key!r}: expected a non-empty string")
        full = prefix + key
        items = flatten(value, full + ".") if isinstance(value, Mapping) else {full: value}
        for name, leaf in items.items():
            if name in out:
                raise ConfigError(f"config key {name!r} is given twice")
            out[name] = leaf
    return out


def nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``{"masks.source": "fh"}`` -> ``{"masks": {"source": "fh"}}`` (the form configs parse)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config key {key!r} conflicts with {part!r} set to a value")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"config key {key!r} is a section, expected one of its fields")
        node[parts[-1]] = value
    return out


def resolve_config(overrides: Mapping[str, Any], profile: str) -> PretrainConfig:
    """The frozen config of a point: ``profile``'s defaults, then dotted ``overrides``.

    The launcher (to validate) and ``notebooks/pretrain.ipynb`` (to train) both call this, so
    the notebook trains exactly the config that was validated.
    """
    return load_pretrain_config(nest(flatten(overrides)), profile=profile)


# --------------------------------------------------------------------------- grid algebra


def _axes(spec: Any, where: str) -> list[tuple[str, list[Any]]]:
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"{where}: expected a non-empty mapping of config key -> list of values")
    axes = []
    for key, values in spec.items():
        if not isinstance(values, list):
            raise ConfigError(
                f"{where}.{key}={values!r}: an axis must be a list of values, e.g. [{values!r}] "
                "(a value common to all points belongs in base)"
            )
        if not values:
            raise ConfigError(f"{where}.{key} is an empty axis: expected at least one value")
        axes.append((str(key), values))
    return axes


def _merge_disjoint(parts: Sequence[Mapping[str, Any]], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        both = sorted(set(out) & set(part))
        if both:
            raise ConfigError(
                f"{where}: the key {both[0]!r} is set by two factors; each key may vary in "
                "one factor only"
            )
        out.update(part)
    return out


def _subnodes(spec: Any, where: str) -> list[Any]:
    if not isinstance(spec, list) or not spec:
        raise ConfigError(f"{where}: expected a non-empty list of grid nodes, got {spec!r}")
    return spec


def expand_grid(node: Any, where: str = "grid") -> list[dict[str, Any]]:
    """Expand a grid node into its points (dotted-key dicts), in file order.

    Raises ConfigError naming the node (e.g. ``grid.union[1].product``) for an unknown
    combinator, an empty axis or list, zip axes of unequal length or a key set twice.
    """
    if not isinstance(node, Mapping) or len(node) != 1:
        keys = list(node) if isinstance(node, Mapping) else type(node).__name__
        raise ConfigError(
            f"{where}: expected a mapping with exactly one of {', '.join(COMBINATORS)}, got "
            f"{keys!r}"
        )
    ((kind, spec),) = node.items()
    here = f"{where}.{kind}"
    if kind not in COMBINATORS:
        raise ConfigError(
            f"{where}: unknown grid combinator {kind!r}{did_you_mean(kind, COMBINATORS)}; expected "
            f"one of {', '.join(COMBINATORS)}"
        )
    if kind == "point":
        if spec is None:
            spec = {}
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{here}: expected a mapping of config key -> value, got {spec!r}")
        return [flatten(spec)]
    if kind == "union":
        points: list[dict[str, Any]] = []
        for i, sub in enumerate(_subnodes(spec, here)):
            points.extend(expand_grid(sub, f"{here}[{i}]"))
        return points
    if isinstance(spec, Mapping):  # axes form of product / zip
        groups = [[{key: v} for v in values] for key, values in _axes(spec, here)]
    else:
        groups = [expand_grid(sub, f"{here}[{i}]") for i, sub in enumerate(_subnodes(spec, here))]
    if kind == "zip":
        lengths = {len(g) for g in groups}
        if len(lengths) != 1:
            raise ConfigError(
                f"{here}: zipped parts have different lengths {[len(g) for g in groups]}; "
                "expected equal lengths"
            )
        return [flatten(_merge_disjoint(parts, here)) for parts in zip(*groups)]
    points = [{}]
    for group in groups:
        points = [_merge_disjoint([p, q], here) for p in points for q in group]
    return [flatten(p) for p in points]


# --------------------------------------------------------------------------- ablation files


@dataclass(frozen=True)
class ProfileSection:
    """Per-profile settings of an ablation (all optional)."""

    overrides: Mapping[str, Any]
    values: Mapping[str, Mapping[Any, Any]]
    seeds: tuple[int, ...] | None
    cluster: str | None


@dataclass(frozen=True)
class Ablation:
    """A parsed ablation file (see the module docstring for the format)."""

    name: str
    description: str
    notebook: str
    parameters: Mapping[str, Mapping[str, Any]]
    seeds: tuple[int, ...]
    base: Mapping[str, Any]
    grid: Mapping[str, Any]
    profiles: Mapping[str, ProfileSection]
    evaluate: tuple[str, ...]
    cluster: str | None
    path: Path

    def section(self, profile: str) -> ProfileSection:
        return self.profiles.get(profile) or ProfileSection({}, {}, None, None)

    def seeds_for(self, profile: str) -> tuple[int, ...]:
        return self.section(profile).seeds or self.seeds

    def cluster_for(self, profile: str) -> str | None:
        return self.section(profile).cluster or self.cluster


def _expect(value: Any, types: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, types):
        raise ConfigError(f"{where}={value!r}: expected {what}, got {type(value).__name__}")
    return value


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key {key!r}{did_you_mean(str(key), allowed)}; expected keys: "
                f"{', '.join(allowed)}"
            )


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    _expect(value, list, where, "a non-empty list of integer seeds")
    if not value:
        raise ConfigError(f"{where} is empty: expected at least one seed, e.g. [0]")
    for s in value:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"{where}: seed {s!r} is not a non-negative integer")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}={value!r}: seeds must be unique")
    return tuple(value)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    _expect(value, Mapping, where, "a mapping")
    return dict(value)


def _parameters(value: Any, where: str) -> dict[str, dict[str, Any]]:
    data = _mapping(value, where)
    _check_keys(data, _STAGES, where)
    return {stage: _mapping(data[stage], f"{where}.{stage}") for stage in data}


def _profile_section(data: Any, where: str) -> ProfileSection:
    data = _mapping(data, where)
    _check_keys(data, _PROFILE_KEYS, where)
    values = _mapping(data.get("values"), f"{where}.values")
    for key, table in values.items():
        _expect(table, Mapping, f"{where}.values.{key}", "a mapping of grid value -> value")
    cluster = data.get("cluster")
    if cluster is not None:
        _expect(cluster, str, f"{where}.cluster", "a cluster profile name")
    return ProfileSection(
        overrides=flatten(_mapping(data.get("overrides"), f"{where}.overrides")),
        values={k: dict(v) for k, v in values.items()},
        seeds=_seeds(data["seeds"], f"{where}.seeds") if "seeds" in data else None,
        cluster=cluster,
    )


def load_ablation(path: str | Path) -> Ablation:
    """Read and check an ablation file's structure (not yet its points: see :func:`expand`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: ``path`` is a folder (the message lists its ablation files).
        ConfigError: invalid YAML, an unknown or mistyped key, a name that differs from the
            file name, an unknown profile.
    """
    path = Path(path)
    if path.is_dir():
        files = ", ".join(sorted(str(p) for p in path.glob("*.yaml")))
        raise ValueError(
            f"{str(path)!r} is a folder, not an ablation file; "
            + (f"its ablation files: {files}" if files else "it holds no ablation file (*.yaml)")
        )
    if not path.is_file():
        raise FileNotFoundError(f"ablation file {str(path)!r} does not exist")
    data = load_yaml(path)
    where = str(path)
    _check_keys(data, _TOP_KEYS, where)
    for key in ("name", "description", "grid"):
        if key not in data:
            raise ConfigError(f"{where}: missing required key {key!r}")
    name = _expect(data["name"], str, f"{where}: name", "a string")
    if not _NAME_RE.match(name) or name != path.stem:
        raise ConfigError(
            f"{where}: name={name!r} must equal the file name {path.stem!r} (runs are stored "
            "under <runs-dir>/<name>/) and use letters, digits, '_', '-', '.'"
        )
    profiles: dict[str, ProfileSection] = {}
    known = available_profiles()
    for prof, section in _mapping(data.get("profiles"), f"{where}: profiles").items():
        if prof not in known:
            raise ConfigError(
                f"{where}: profiles.{prof}: unknown profile{did_you_mean(prof, known)}; expected "
                f"one of {', '.join(known)}"
            )
        profiles[prof] = _profile_section(section, f"{where}: profiles.{prof}")
    evaluate = data.get("evaluate") or []
    _expect(evaluate, list, f"{where}: evaluate", "a list of task names")
    for task in evaluate:
        _expect(task, str, f"{where}: evaluate", "a list of task names")
    if len(set(evaluate)) != len(evaluate):
        raise ConfigError(f"{where}: evaluate={evaluate!r} names a task twice")
    cluster = data.get("cluster")
    if cluster is not None:
        _expect(cluster, str, f"{where}: cluster", "a cluster profile name")
    grid = data["grid"]
    _expect(grid, Mapping, f"{where}: grid", "a grid node (product/zip/union/point)")
    base = _mapping(data.get("base"), f"{where}: base")
    try:  # the grid's structure and base's keys, checked here so that their errors name the file
        expand_grid(dict(grid))
        base = flatten(base)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return Ablation(
        name=name,
        description=_expect(data["description"], str, f"{where}: description", "a string"),
        notebook=_expect(data.get("notebook", "pretrain"), str, f"{where}: notebook", "a name"),
        parameters=_parameters(data.get("parameters"), f"{where}: parameters"),
        seeds=_seeds(data.get("seeds", [0]), f"{where}: seeds"),
        base=base,
        grid=dict(grid),
        profiles=profiles,
        evaluate=tuple(evaluate),
        cluster=cluster,
        path=path,
    )


# --------------------------------------------------------------------------- points and ids


@dataclass(frozen=True)
class GridPoint:
    """One point of an ablation at one profile.

    Attributes:
        ablation: the ablation's name.
        profile: the profile name (``cpu`` / ``paper``).
        run_id: stable directory name, e.g. ``detcon_b-fh-s0-3f2a1c``.
        digest: the point's identity, :func:`config_digest` (64 hex digits); the run id shows
            its shortest prefix of at least 6 digits that no other point of the ablation shares.
        params: this point's own grid parameters (dotted keys, profile ``values`` applied) and
            its ``seed``: what distinguishes it.
        overrides: every dotted override on top of the profile's defaults (base, profile
            overrides, params); ``resolve_config(overrides, profile) == config``.
        config: the validated frozen config.
        notebook_params: the point's own notebook parameters (grid keys ``notebook.<name>``,
            prefix removed); empty for most ablations.
    """

    ablation: str
    profile: str
    run_id: str
    params: Mapping[str, Any]
    overrides: Mapping[str, Any]
    config: PretrainConfig
    digest: str
    notebook_params: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "ablation": self.ablation,
            "profile": self.profile,
            "run_id": self.run_id,
            "config_digest": self.digest,
            "params": dict(self.params),
            "overrides": dict(self.overrides),
            "notebook_params": dict(self.notebook_params),
        }


def _token(key: str, value: Any) -> str:
    last = key.rsplit(".", 1)[-1]
    is_file = isinstance(value, str) and ("/" in value or value.endswith((".npy", ".pt")))
    if key.startswith(NOTEBOOK_PREFIX) and is_file:
        tok = Path(value).stem  # a file: its name reads better than its folder
    elif isinstance(value, bool) or value is None:  # None: named, then refused by type
        tok = last if value else f"no_{last}"
    elif isinstance(value, str):
        tok = value
    elif isinstance(value, (int, float)):
        tok = f"{_TOKEN_PREFIX.get(key, last)}{value:g}"
    else:  # lists (e.g. crop_scale): compact and filesystem-safe
        tok = last + "_".join(f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in value)
    return re.sub(r"[^A-Za-z0-9_.]+", "_", tok).strip("_") or "x"


# Config fields added after the committed study's results were made: at their declared default
# a field is left out of the digest, so every run id from before it existed stays the same
# (results/, RESULTS.md's commands); any other value is part of the point's identity as usual.
# A new field goes here unless its addition is meant to move every run id (a new scene knob also
# into detcon.data.synthetic._KNOBS_ADDED_LATER, which keeps the scene caches' names).
DIGEST_NEW_FIELDS: tuple[str, ...] = (
    "data.scene_background_color_spread",
    "data.scene_classes_per_scene",
    "model.target_init",
)


def config_digest(config: PretrainConfig, notebook_params: Mapping[str, Any] | None = None) -> str:
    """SHA-256 (64 hex digits) of the resolved config (canonical JSON), and of the point's
    notebook parameters when it has any (without them the digest is the config's). Fields of
    :data:`DIGEST_NEW_FIELDS` at their default are left out (:func:`detcon.config.identity_dict`).

    All of it is the point's identity: a 6-digit prefix alone collides (``optim.base_lr`` 4.73
    and 5.527 share one; at ~5,000 points some pair does about every other grid).
    """
    data: Any = identity_dict(config, DIGEST_NEW_FIELDS)
    if notebook_params:
        data = {"config": data, "notebook": dict(notebook_params)}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def short_digests(digests: Sequence[str], minimum: int = _SHORT_DIGEST) -> list[str]:
    """For each of ``digests`` (distinct), its shortest prefix of at least ``minimum`` digits
    that no other one starts with: only digests that share a prefix get longer, so the other
    run ids of a grid keep their names."""
    order = sorted(digests)
    shared = dict.fromkeys(order, 0)  # longest prefix each shares with another digest
    for a, b in zip(order, order[1:]):
        n = len(os.path.commonprefix([a, b]))
        shared[a], shared[b] = max(shared[a], n), max(shared[b], n)
    return [d[: max(minimum, shared[d] + 1)] for d in digests]


def run_id(params: Mapping[str, Any], digest: str) -> str:
    """``{method: detcon_b, masks.source: fh, seed: 0}``, ``3f2a1c`` -> ``detcon_b-fh-s0-3f2a1c``.

    The readable part comes from the point's own parameters only (not from which keys vary
    elsewhere in the grid), so adding arms or seeds to a grid never renames existing runs.
    ``digest`` (from :func:`short_digests`) covers the whole resolved config: a change to
    anything that would be trained (base, profile defaults) gives a new directory instead of
    silently mixing results.
    """
    keys = [k for k in params if k != "seed"] + (["seed"] if "seed" in params else [])
    label = "-".join(_token(k, params[k]) for k in keys)[:_MAX_LABEL].rstrip("-_.")
    return f"{label}-{digest}" if label else digest


def _apply_values(
    point: Mapping[str, Any], values: Mapping[str, Mapping[Any, Any]]
) -> dict[str, Any]:
    out = dict(point)
    for key, table in values.items():
        if key in out:
            value = out[key]
            try:
                out[key] = table.get(value, value)
            except TypeError:  # unhashable value (a list): never mapped
                pass
    return out


def _check_values(
    points: Sequence[Mapping[str, Any]], values: Mapping[str, Mapping[Any, Any]], where: str
) -> None:
    for key, table in values.items():
        used = [p[key] for p in points if key in p]
        if not used:
            raise ConfigError(f"{where}.values.{key}: no grid point sets {key!r}")
        grid_values = ", ".join(map(repr, _distinct(used)))
        for src in table:
            if src not in used:
                raise ConfigError(
                    f"{where}.values.{key} maps {src!r}, which no grid point uses "
                    f"(grid values: {grid_values})"
                )
        for value in _distinct(used):  # an unmapped value would run at the paper's scale
            if not isinstance(value, (list, tuple)) and value not in table:
                raise ConfigError(
                    f"{where}.values.{key} has no entry for the grid value {value!r} (grid "
                    f"values: {grid_values}); map every one, e.g. {value!r}: {value!r} to keep it"
                )


def _distinct(values: Sequence[Any]) -> list[Any]:
    """``values`` without repeats, in order (lists compared by value, though unhashable)."""
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def select_points(
    points: Sequence[GridPoint], only: str | None, ablation: str, profile: str
) -> list[GridPoint]:
    """The points whose run id contains ``only`` (all of them without it).

    Raises:
        ValueError: ``only`` matches no run id (a typo; the message shows some of them).
    """
    if not only:
        return list(points)
    chosen = [p for p in points if only in p.run_id]
    if not chosen:
        raise ValueError(
            f"--only {only!r} matches no run id of {ablation} at profile {profile!r}; "
            f"ids: {', '.join(p.run_id for p in points[:8])}" + (", ..." if len(points) > 8 else "")
        )
    return chosen


def expand(ablation: Ablation, profile: str) -> list[GridPoint]:
    """Every point of ``ablation`` at ``profile``, each config validated strictly.

    Order: seeds outermost (all configs of seed 0 first, so a partial grid already covers every
    arm once), then the grid in file order.

    Raises:
        ConfigError: a bad grid, a point whose config does not validate (the message names the
            point), a grid point that sets ``seed`` (use ``seeds:``), two points with the same
            resolved config.
    """
    known = available_profiles()
    if profile not in known:
        raise ConfigError(f"unknown profile {profile!r}: expected one of {', '.join(known)}")
    where = f"{ablation.path}"
    grid_points = expand_grid(ablation.grid)
    section = ablation.section(profile)
    _check_values(grid_points, section.values, f"{where}: profiles.{profile}")
    resolved: list[tuple[dict[str, Any], dict[str, Any], PretrainConfig, str, dict[str, Any]]] = []
    seen: dict[str, str] = {}
    for name, fixed in (
        ("base", ablation.base),
        (f"profiles.{profile}.overrides", section.overrides),
    ):
        if "seed" in fixed:
            # every point's seed comes from `seeds:`: this one would be dropped without a word
            raise ConfigError(
                f"{where}: {name} sets 'seed' ({fixed['seed']!r}); list seeds under 'seeds:' "
                f"(or profiles.{profile}.seeds)"
            )
        if "profile" in fixed:
            raise ConfigError(
                f"{where}: {name} sets 'profile'; the profile is chosen with --profile"
            )
    for seed in ablation.seeds_for(profile):
        for raw in grid_points:
            if "seed" in raw:
                raise ConfigError(
                    f"{where}: a grid point sets 'seed' ({raw!r}); list seeds under 'seeds:'"
                )
            if "profile" in raw:  # the point would take the profile's name, not its values
                raise ConfigError(
                    f"{where}: a grid point sets 'profile' ({raw!r}); the profile is chosen with "
                    "--profile, and a file's profiles: section sets its values"
                )
            params = {**_apply_values(raw, section.values), "seed": seed}
            notebook = {
                k[len(NOTEBOOK_PREFIX) :]: v
                for k, v in params.items()
                if k.startswith(NOTEBOOK_PREFIX)
            }
            own = {k: v for k, v in params.items() if not k.startswith(NOTEBOOK_PREFIX)}
            overrides = {**ablation.base, **section.overrides, **own}
            try:
                config = resolve_config(overrides, profile)
            except ConfigError as exc:
                shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
                raise ConfigError(
                    f"{where}: the point {{{shown}}} (profile {profile!r}) is not a valid "
                    f"config: {exc}"
                ) from None
            digest = config_digest(config, notebook)
            if digest in seen:
                raise ConfigError(
                    f"{where}: two grid points resolve to the same config at profile "
                    f"{profile!r} ({seen[digest]} and {params!r}); remove the duplicate"
                )
            seen[digest] = repr(params)
            resolved.append((params, overrides, config, digest, notebook))
    shown = short_digests([digest for _, _, _, digest, _ in resolved])
    return [
        GridPoint(
            ablation.name,
            profile,
            run_id(params, short),
            params,
            overrides,
            config,
            digest,
            notebook,
        )
        for (params, overrides, config, digest, notebook), short in zip(resolved, shown)
    ]
