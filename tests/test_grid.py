"""Ablation files -> grid points -> run ids (detcon.grid)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from detcon.config import ConfigError, to_dict
from detcon.grid import (
    config_digest,
    expand,
    expand_grid,
    flatten,
    load_ablation,
    nest,
    resolve_config,
)
from detcon.launch import load_cluster_profile

REPO = Path(__file__).resolve().parent.parent
ABLATIONS = sorted((REPO / "ablations").glob("*.yaml"))
# Points per shipped file (grid size x seeds); the same at both profiles.
EXPECTED_POINTS = {
    "baselines": 4 * 3,
    "demo": 2 * 1,
    "mask_type": 2 * 4 * 3,
    "negatives": 2 * 2 * 2 * 3,
    "official_checkpoints": 3 * 1,
    "resolution": 3 * 3 * 3,
    "sample_efficiency": 4 * 4 * 3,
    "single_view": 4 * 2 * 3,
}
RUN_ID = re.compile(r"^[A-Za-z0-9_.-]+-[0-9a-f]{6}$")


def write(tmp_path: Path, text: str, name: str = "abl") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ndescription: test\n" + textwrap.dedent(text))
    return path


def _unlisted(stem: str) -> str:
    return (
        f"ablations/{stem}.yaml is not in EXPECTED_POINTS of tests/test_grid.py: add "
        f"'{stem}': <its number of points> there (`detcon run ablations/{stem}.yaml --dry-run` "
        "counts them), so that the tests check what it expands to"
    )


def test_every_shipped_ablation_is_listed():
    files = {p.stem for p in ABLATIONS}
    assert not files - set(EXPECTED_POINTS), _unlisted(sorted(files - set(EXPECTED_POINTS))[0])
    assert files == set(EXPECTED_POINTS), "EXPECTED_POINTS lists files ablations/ does not have"


@pytest.mark.parametrize("profile", ["cpu", "paper"])
@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_shipped_ablations_expand_and_validate(path, profile):
    ablation = load_ablation(path)
    points = expand(ablation, profile)
    assert path.stem in EXPECTED_POINTS, _unlisted(path.stem)
    assert len(points) == EXPECTED_POINTS[path.stem]
    ids = [p.run_id for p in points]
    assert len(set(ids)) == len(ids)
    assert all(RUN_ID.match(i) for i in ids), ids
    for p in points:  # each point's config is what its overrides resolve to, at its profile
        assert p.config.profile == profile
        assert to_dict(resolve_config(p.overrides, profile)) == to_dict(p.config)
    cluster = ablation.cluster_for(profile)
    assert cluster is not None and load_cluster_profile(cluster).timeout_min > 0
    assert set(ablation.evaluate) <= {"segmentation", "depth", "linear", "detection"}


def test_profile_values_map_paper_values_to_cpu_scale():
    ablation = load_ablation(REPO / "ablations" / "resolution.yaml")
    cpu = {p.config.augment.crop_size for p in expand(ablation, "cpu")}
    paper = {p.config.augment.crop_size for p in expand(ablation, "paper")}
    assert cpu == {64, 112, 144} and paper == {224, 384, 512}
    negatives = load_ablation(REPO / "ablations" / "negatives.yaml")
    assert {p.config.loss.negative_groups for p in expand(negatives, "cpu")} == {1, 8}
    assert {p.config.loss.negative_groups for p in expand(negatives, "paper")} == {1, 128}


def test_baselines_image_level_methods_use_one_whole_image_mask():
    points = expand(load_ablation(REPO / "ablations" / "baselines.yaml"), "cpu")
    for p in points:
        if p.config.method in ("simclr", "byol"):
            assert p.config.masks.source == "image" and p.config.masks.num_samples == 1
        else:
            assert p.config.masks.source == "fh"


def test_sample_efficiency_runs_each_length_with_its_own_schedule_and_shares_the_baselines():
    """DetCon-B vs BYOL and DetCon-S vs SimCLR at >= 4 pretraining lengths; a length is its own
    run (the config differs in optim.epochs only, so warmup, decay and EMA span that length),
    the cpu lengths keep the paper's fractions of the longest, and the longest points are the
    baselines file's points (taken over by `detcon run`, docs/design.md §2.2)."""

    from detcon.config import load_pretrain_config, total_steps, warmup_steps

    ablation = load_ablation(REPO / "ablations" / "sample_efficiency.yaml")
    fractions = {}
    for profile in ("cpu", "paper"):
        points = expand(ablation, profile)
        lengths = sorted({p.config.optim.epochs for p in points})
        assert len(lengths) >= 4
        fractions[profile] = [round(e / lengths[-1], 6) for e in lengths]
        for method in ("simclr", "byol", "detcon_s", "detcon_b"):
            own = [p for p in points if p.config.method == method and p.params["seed"] == 0]
            assert sorted(p.config.optim.epochs for p in own) == lengths
            configs = [to_dict(p.config) for p in own]
            for c in configs:
                c["optim"].pop("epochs")
                c["optim"].pop("warmup_epochs")
            assert all(c == configs[0] for c in configs)  # only the length (and warmup) differ
            n = 1_281_167 if profile == "paper" else own[0].config.data.num_images  # images
            steps = [total_steps(p.config.optim, n) for p in own]
            assert steps == sorted(steps) and len(set(steps)) == len(steps)
            # the warmup is the same fraction of every length (paper: the release's 1%)
            warmups = [p.config.optim.warmup_epochs / p.config.optim.epochs for p in own]
            assert max(warmups) - min(warmups) < 1e-9 and warmups[0] > 0
            expected = 0.01 if profile == "paper" else 2 / 24
            assert warmups[0] == pytest.approx(expected)
            assert [warmup_steps(p.config.optim, n) for p in own] == sorted(
                int(p.config.optim.warmup_epochs * n // p.config.optim.batch_size) for p in own
            )
        # The longest points are the baselines' points: the profile's own schedule (the cpu
        # values assume cpu.yaml's 24 epochs and 2 warmup epochs; this fails when it drifts).
        baselines = expand(load_ablation(REPO / "ablations" / "baselines.yaml"), profile)
        own = load_pretrain_config({}, profile=profile).optim
        assert lengths[-1] == own.epochs
        longest = {p.digest for p in points if p.config.optim.epochs == lengths[-1]}
        assert longest == {p.digest for p in baselines}
    assert fractions["cpu"] == fractions["paper"]


def test_run_ids_are_readable_stable_and_differ_between_profiles(tmp_path):
    path = write(
        tmp_path,
        """
        seeds: [0, 1]
        grid:
          product: {method: [detcon_b], masks.source: [grid, fh], augment.single_view: [true]}
        """,
    )
    first = [p.run_id for p in expand(load_ablation(path), "cpu")]
    again = [p.run_id for p in expand(load_ablation(path), "cpu")]
    assert first == again
    assert first[0].startswith("detcon_b-grid-single_view-s0-")
    assert [i.rsplit("-", 1)[0] for i in first] == [
        "detcon_b-grid-single_view-s0",
        "detcon_b-fh-single_view-s0",
        "detcon_b-grid-single_view-s1",
        "detcon_b-fh-single_view-s1",
    ]
    paper = [p.run_id for p in expand(load_ablation(path), "paper")]
    assert not set(first) & set(paper)


def test_notebook_keys_are_per_point_notebook_parameters_not_config(tmp_path):
    path = write(
        tmp_path,
        """
        grid:
          union:
            - point: {}
            - point: {notebook.official_checkpoint: data/official/r50.npy}
        """,
    )
    plain, official = expand(load_ablation(path), "cpu")
    assert plain.config == official.config
    assert "notebook.official_checkpoint" not in official.overrides
    assert official.notebook_params == {"official_checkpoint": "data/official/r50.npy"}
    assert plain.notebook_params == {}
    # Same config, different notebook parameters: different runs, the file named in the id.
    assert official.run_id.startswith("r50-s0-") and plain.run_id != official.run_id
    # Points without notebook parameters keep the ids they had: the digest is the config's.
    assert plain.digest == config_digest(plain.config)
    assert plain.run_id.endswith("-" + plain.digest[:6])


def test_growing_a_grid_keeps_existing_run_ids(tmp_path):
    small = write(tmp_path, "grid:\n  product: {masks.source: [grid, fh]}\n", "a")
    big = write(
        tmp_path,
        """
        seeds: [0, 1]
        grid:
          union:
            - product: {masks.source: [grid, fh]}
            - point: {masks.source: grid, masks.grid_size: 8}
        """,
        "b",
    )
    before = {p.run_id for p in expand(load_ablation(small), "cpu")}
    after = {p.run_id for p in expand(load_ablation(big), "cpu")}
    assert before < after and len(after) == 6
    assert any(i.startswith("grid-grid8-s1-") for i in after)


def test_changing_the_base_config_changes_the_hash_only(tmp_path):
    a = write(tmp_path, "grid:\n  product: {masks.source: [fh]}\n", "a")
    b = write(tmp_path, "base: {optim.epochs: 2}\ngrid:\n  product: {masks.source: [fh]}\n", "b")
    (ra,), (rb,) = expand(load_ablation(a), "cpu"), expand(load_ablation(b), "cpu")
    assert ra.run_id.rsplit("-", 1)[0] == rb.run_id.rsplit("-", 1)[0] == "fh-s0"
    assert ra.run_id != rb.run_id


def test_grid_algebra():
    grid = {
        "union": [
            {"product": {"a.x": [1, 2], "a.y": ["p", "q"]}},
            {"zip": {"a.x": [3, 4], "a.y": ["r", "s"]}},
            {"product": [{"point": {"a.z": True}}, {"zip": [{"point": {"b": 1}}]}]},
            {"point": {}},
        ]
    }
    assert expand_grid(grid) == [
        {"a.x": 1, "a.y": "p"},
        {"a.x": 1, "a.y": "q"},
        {"a.x": 2, "a.y": "p"},
        {"a.x": 2, "a.y": "q"},
        {"a.x": 3, "a.y": "r"},
        {"a.x": 4, "a.y": "s"},
        {"a.z": True, "b": 1},
        {},
    ]
    # List-valued config values are axis values; nested mappings are flattened.
    assert expand_grid({"product": {"augment.crop_scale": [[0.2, 1.0]]}}) == [
        {"augment.crop_scale": [0.2, 1.0]}
    ]
    assert expand_grid({"point": {"masks": {"source": "fh"}}}) == [{"masks.source": "fh"}]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"prodcut": {"a": [1]}}, r"unknown grid combinator 'prodcut'.*did you mean 'product'"),
        ({"product": {"a": []}}, r"grid\.product\.a is an empty axis"),
        ({"product": {"a": 1}}, r"grid\.product\.a=1: an axis must be a list"),
        ({"zip": {"a": [1, 2], "b": [1]}}, r"grid\.zip: zipped parts have different lengths"),
        ({"union": []}, r"grid\.union: expected a non-empty list"),
        (
            {"product": [{"point": {"a": 1}}, {"point": {"a": 2}}]},
            r"the key 'a' is set by two factors",
        ),
        ({"product": {"a": [1]}, "union": []}, r"exactly one of product"),
        ({"union": [{"product": {"a": [1]}}, {"pointt": {}}]}, r"grid\.union\[1\]: unknown"),
    ],
)
def test_bad_grids_are_named(grid, message):
    with pytest.raises(ConfigError, match=message):
        expand_grid(grid)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grid: {point: {}}\nseed: [0]\n", r"unknown key 'seed'.*did you mean 'seeds'"),
        ("grid: {point: {}}\nseeds: '0'\n", r"seeds='0': expected a non-empty list"),
        ("grid: {point: {}}\nseeds: []\n", r"seeds is empty"),
        ("grid: {point: {}}\nprofiles: {gpu: {}}\n", r"profiles\.gpu: unknown profile"),
        (
            "grid: {point: {}}\nprofiles: {cpu: {overides: {}}}\n",
            r"unknown key 'overides'.*did you mean 'overrides'",
        ),
        (
            "grid: {point: {}}\nevaluate: segmentation\n",
            r"evaluate='segmentation': expected a list",
        ),
        ("grid: {point: {}}\nparameters: {train: {}}\n", r"unknown key 'train'"),
        ("description: x\n", r"missing required key 'grid'"),
    ],
)
def test_bad_ablation_files_are_named(tmp_path, text, message):
    path = tmp_path / "abl.yaml"
    path.write_text(
        "name: abl\n" + ("description: t\n" if "description" not in text else "") + text
    )
    with pytest.raises(ConfigError, match=message):
        load_ablation(path)


def test_a_folder_instead_of_an_ablation_file_lists_the_files_in_it(tmp_path, capsys):
    from detcon.cli import main

    write(tmp_path, "grid: {point: {}}\n", "b")
    write(tmp_path, "grid: {point: {}}\n", "a")
    with pytest.raises(
        ValueError, match=r"is a folder, not an ablation file; its ablation files: "
    ):
        load_ablation(tmp_path)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'a.yaml'}, {tmp_path / 'b.yaml'}$"):
        load_ablation(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match=r"not an ablation file; it holds no ablation file \(\*\.yaml\)"
    ):
        load_ablation(tmp_path / "empty")
    assert main(["status", str(REPO / "ablations")]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not an ablation file" in err and "mask_type.yaml" in err
    assert "does not exist" not in err


def test_name_must_match_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: other\ndescription: t\ngrid: {point: {}}\n")
    with pytest.raises(ConfigError, match=r"name='other' must equal the file name 'mine'"):
        load_ablation(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_ablation(tmp_path / "missing.yaml")


def test_invalid_point_configs_name_the_point(tmp_path):
    typo = write(tmp_path, "grid:\n  product: {masks.sorce: [fh]}\n", "typo")
    with pytest.raises(ConfigError, match=r"point \{masks\.sorce='fh'.*mean 'masks\.source'"):
        expand(load_ablation(typo), "cpu")
    wrong = write(tmp_path, "grid:\n  product: {optim.batch_size: [big]}\n", "wrong")
    with pytest.raises(ConfigError, match=r"optim\.batch_size='big': expected an integer"):
        expand(load_ablation(wrong), "cpu")
    byol = write(tmp_path, "grid:\n  product: {method: [byol]}\n", "byol")
    with pytest.raises(ConfigError, match=r"masks\.source='image'"):
        expand(load_ablation(byol), "paper")


def test_seed_in_grid_duplicates_and_unused_values_are_rejected(tmp_path):
    seed = write(tmp_path, "grid:\n  product: {seed: [0, 1]}\n", "seed")
    with pytest.raises(ConfigError, match=r"sets 'seed'.*seeds:"):
        expand(load_ablation(seed), "cpu")
    # a seed in base or a profile's overrides was dropped without a word (run ids of seed 0)
    base = write(tmp_path, "base: {seed: 5}\ngrid:\n  product: {method: [byol]}\n", "base")
    with pytest.raises(ConfigError, match=r"base sets 'seed' \(5\); list seeds under 'seeds:'"):
        expand(load_ablation(base), "cpu")
    over = write(
        tmp_path,
        "grid:\n  product: {method: [byol]}\nprofiles:\n  cpu: {overrides: {seed: 5}}\n",
        "over",
    )
    with pytest.raises(ConfigError, match=r"profiles\.cpu\.overrides sets 'seed' \(5\)"):
        expand(load_ablation(over), "cpu")
    dup = write(tmp_path, "grid:\n  union: [{point: {}}, {point: {method: detcon_b}}]\n", "dup")
    with pytest.raises(ConfigError, match="resolve to the same config"):
        expand(load_ablation(dup), "cpu")
    values = write(
        tmp_path,
        """
        grid:
          product: {augment.crop_size: [224]}
        profiles:
          cpu: {values: {augment.crop_size: {225: 64}}}
        """,
        "values",
    )
    with pytest.raises(ConfigError, match=r"maps 225, which no grid point uses.*224"):
        expand(load_ablation(values), "cpu")
    assert expand(load_ablation(values), "paper")[0].config.augment.crop_size == 224
    # a grid value the table leaves out ran at the paper's scale (500 epochs at cpu): refused
    unmapped = write(
        tmp_path,
        """
        grid:
          product: {augment.crop_size: [224, 384]}
        profiles:
          cpu: {values: {augment.crop_size: {224: 64}}}
        """,
        "unmapped",
    )
    with pytest.raises(ConfigError, match=r"no entry for the grid value 384 .*384: 384"):
        expand(load_ablation(unmapped), "cpu")


def test_flatten_and_nest_are_inverse():
    nested = {
        "masks": {"source": "fh", "num_samples": 4},
        "seed": 1,
        "augment": {"crop_scale": [0.2, 1]},
    }
    flat = flatten(nested)
    assert flat == {
        "masks.source": "fh",
        "masks.num_samples": 4,
        "seed": 1,
        "augment.crop_scale": [0.2, 1],
    }
    assert nest(flat) == nested
    with pytest.raises(ConfigError, match="is given twice"):
        flatten({"masks.source": "fh", "masks": {"source": "grid"}})


def test_two_grid_keys_are_an_error_not_half_a_grid(tmp_path):
    path = write(
        tmp_path,
        """
        grid:
          product: {masks.source: [grid, fh]}
        grid:
          product: {masks.source: [mcg]}
        """,
    )
    with pytest.raises(
        ConfigError, match=r"abl\.yaml: line 6: the key 'grid' is given twice \(first on line 4\)"
    ):
        load_ablation(path)


def test_cluster_profile_with_a_key_given_twice_is_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("nodes: 1\nnodes: 2\n")
    with pytest.raises(ConfigError, match=r"line 2: the key 'nodes' is given twice"):
        load_cluster_profile(str(tmp_path / "c.yaml"))


def _old_short_digest(config) -> str:
    """The run-id digest as it was computed before it was lengthened on demand (6 hex digits),
    over the fields that existed then (without those of DIGEST_NEW_FIELDS)."""
    import hashlib
    import json

    from detcon.grid import DIGEST_NEW_FIELDS

    data = to_dict(config)
    for dotted in DIGEST_NEW_FIELDS:
        section, name = dotted.split(".")
        del data[section][name]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:6]


@pytest.mark.parametrize(
    "path",
    [p for p in ABLATIONS if (REPO / "results" / p.stem).is_dir()],
    ids=lambda p: p.stem,
)
def test_shipped_cpu_points_are_the_committed_results_points(path):
    """The committed study's run ids (results/<ablation>/<run id>/) are among those the shipped
    files expand to: a config field added without its entry in DIGEST_NEW_FIELDS, or a profile
    value changed, moves every run id and orphans the committed results. (An export of some of
    a file's points, those done so far, is a valid results folder.)"""
    ablation = load_ablation(path)
    committed = REPO / "results" / ablation.name
    ids = {p.run_id for p in expand(ablation, "cpu")}
    orphans = {d.name for d in committed.iterdir() if d.is_dir()} - ids
    assert not orphans, f"results/{ablation.name}/ holds runs no point expands to: {orphans}"


@pytest.mark.parametrize("profile", ["cpu", "paper"])
@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.stem)
def test_shipped_run_ids_keep_their_six_digit_digest(path, profile):
    """Run ids keep six digits, as digests over the fields that existed before
    DIGEST_NEW_FIELDS (the committed results pin them: the test above)."""
    for p in expand(load_ablation(path), profile):
        if not p.notebook_params:
            assert p.run_id.endswith("-" + _old_short_digest(p.config)), p.run_id
        assert len(p.run_id.rsplit("-", 1)[1]) == 6


def test_points_whose_digests_share_six_digits_are_distinct_with_longer_ids(tmp_path, monkeypatch):
    """Two configs whose SHA-256 share their first 24 bits (forced here: any real pair found by
    search stops colliding when a profile value changes) get distinct, longer run ids."""
    import detcon.grid as grid_module

    real = grid_module.config_digest

    def colliding(config, notebook_params=None):
        digest = real(config, notebook_params)
        return "abcdef" + digest[6:]  # the same six leading digits for every config

    monkeypatch.setattr(grid_module, "config_digest", colliding)
    path = write(tmp_path, "grid:\n  product: {optim.base_lr: [4.73, 5.527]}\n")
    a, b = expand(load_ablation(path), "cpu")
    assert a.config != b.config
    assert a.digest[:6] == b.digest[:6] and len(a.digest) == 64 and a.digest != b.digest
    assert a.run_id != b.run_id
    short_a, short_b = a.run_id.rsplit("-", 1)[1], b.run_id.rsplit("-", 1)[1]
    assert len(short_a) > 6 and a.digest.startswith(short_a) and b.digest.startswith(short_b)
    assert a.to_json()["config_digest"] == a.digest


def test_short_digests_are_the_shortest_unique_prefixes():
    from detcon.grid import short_digests

    digests = ["abcdef01" + "0" * 56, "abcdef02" + "0" * 56, "123456" + "f" * 58]
    assert short_digests(digests) == ["abcdef01", "abcdef02", "123456"]
    assert short_digests(digests[:1]) == ["abcdef"]


def test_fields_added_after_the_study_leave_run_ids_alone_at_their_default():
    """A field of DIGEST_NEW_FIELDS is a real config field whose declared default the cpu profile
    keeps; at the default it does not enter the digest (the committed results keep their run ids;
    test_figures checks the fixture's), and any other value does."""
    import dataclasses
    import typing

    from detcon.config import load_pretrain_config
    from detcon.grid import DIGEST_NEW_FIELDS, config_digest

    base = load_pretrain_config({}, profile="cpu")
    for dotted in DIGEST_NEW_FIELDS:
        section, name = dotted.split(".")
        declared = {f.name: f.default for f in dataclasses.fields(getattr(base, section))}
        assert to_dict(base)[section][name] == declared[name], dotted
        if isinstance(declared[name], str):  # a Literal field: another of its values
            choices = typing.get_args(typing.get_type_hints(type(getattr(base, section)))[name])
            value = next(v for v in choices if v != declared[name])
        else:
            value = declared[name] + 1 if isinstance(declared[name], int) else 0.5
        other = load_pretrain_config({section: {name: value}}, profile="cpu")
        assert config_digest(other) != config_digest(base)


def test_grid_and_base_errors_name_the_file(tmp_path):
    # "grid.union: expected a non-empty list", "config key ... is given twice": which file?
    empty = write(tmp_path, "grid:\n  union: []\n", "empty")
    with pytest.raises(ConfigError, match=r"empty\.yaml: grid\.union: expected a non-empty list"):
        load_ablation(empty)
    twice = write(
        tmp_path, "grid:\n  point: {}\nbase: {masks: {source: grid}, masks.source: fh}\n", "twice"
    )
    with pytest.raises(ConfigError, match=r"twice\.yaml: config key 'masks\.source' is given"):
        load_ablation(twice)
