"""detcon.claims: results tables with a known truth -> verdicts, statistics, RESULTS.md."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from detcon import cli
from detcon.claims import (
    BEGIN,
    CLAIMS,
    END,
    HEADER,
    ClaimSpec,
    Criterion,
    Difference,
    Efficiency,
    _reference,
    bootstrap,
    evaluate_claims,
    load_tables,
    read_results_table,
    render_claims_markdown,
    replace_block,
    spearman,
)
from detcon.grid import expand, load_ablation

# The tidy table's parameter columns, filled as `detcon report` fills them.
from detcon.results import _param_table

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
QUALITY = pd.DataFrame(
    {
        "source": ["grid", "fh", "mcg", "ground_truth"],
        "mean_best_iou": [0.26, 0.51, 0.66, 1.0],
        "coverage_at_50": [0.09, 0.5, 0.76, 1.0],
    }
)
FLOOR, CEILING = 0.20, 0.60  # segmentation mIoU of the random and supervised references


def seed_offset(seed: int) -> float:
    """A per-seed shift common to every point (shared initialisation and data order): paired
    comparisons cancel it."""
    return 0.02 * (seed - 1)


def tidy(
    ablation: str,
    points: list[dict[str, Any]],
    miou: Callable[[Mapping[str, Any]], float],
    *,
    jitter: float = 0.001,
) -> pd.DataFrame:
    """A results table as `detcon report` + export would write it: per point (params with
    ``seed``), pretrained segmentation / depth / detection / pretrain rows and the two
    references; every metric follows ``miou`` (depth and detection shifted)."""
    rows = []
    for i, params in enumerate(points):
        seed = params["seed"]
        value = miou(params) + seed_offset(seed) + jitter * ((i + seed) % 3 - 1)
        ident = {
            "ablation": ablation,
            "run_id": f"{ablation}-{i}",
            **params,
            "config_digest": f"{i:064x}",
            "git_commit": "abc1234def",
        }
        for task, metric, shift in (
            ("segmentation", "miou", 0.0),
            ("depth", "delta1", 0.2),
            ("detection", "ap_bb", -0.1),
        ):
            rows.append(ident | {"backbone": "pretrained", "task": task, "metric": metric,
                                 "value": value + shift})  # fmt: skip
            rows.append(ident | {"backbone": "random", "task": task, "metric": metric,
                                 "value": FLOOR + shift})  # fmt: skip
            rows.append(ident | {"backbone": "supervised", "task": task, "metric": metric,
                                 "value": CEILING + shift})  # fmt: skip
        rows.append(ident | {"backbone": "pretrained", "task": "pretrain", "metric": "final_loss",
                             "value": 3.0})  # fmt: skip
    return pd.DataFrame(rows)


def grid_points(ablation: str) -> list[dict[str, Any]]:
    """The real ablation file's points at the cpu profile, with the parameter columns the tidy
    table has (union arms filled from the resolved config), one per seed."""
    points = expand(load_ablation(ROOT / "ablations" / f"{ablation}.yaml"), "cpu")
    _, values = _param_table(points)
    return [v | {"seed": p.params["seed"]} for p, v in zip(points, values)]


def product(seeds=SEEDS, **axes: list[Any]) -> list[dict[str, Any]]:
    points = [{"seed": s} for s in seeds]
    for key, values in axes.items():
        points = [p | {key: v} for p in points for v in values]
    return points


# A world where every claim of the paper holds, built on the ablation files' real grids.
QUALITY_OF = dict(zip(QUALITY["source"], QUALITY["mean_best_iou"]))
PAPER_WORLD: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "baselines": lambda p: {"detcon_b": 0.50, "byol": 0.45, "detcon_s": 0.48, "simclr": 0.44}[
        p["method"]
    ],
    "mask_type": lambda p: (
        0.3 + 0.2 * QUALITY_OF[p["masks.source"]] + (0.01 if p["method"] == "detcon_b" else 0.0)
    ),
    "resolution": lambda p: {
        "ground_truth": {64: 0.40, 112: 0.45, 144: 0.50},
        "mcg": {64: 0.38, 112: 0.42, 144: 0.41},
        "fh": {64: 0.36, 112: 0.40, 144: 0.395},
    }[p["masks.source"]][p["augment.crop_size"]],
    "negatives": lambda p: {
        ("detcon_b", "ground_truth"): {1: 0.50, 8: 0.499},
        ("detcon_s", "ground_truth"): {1: 0.48, 8: 0.49},
        ("detcon_b", "fh"): {1: 0.45, 8: 0.42},
        ("detcon_s", "fh"): {1: 0.44, 8: 0.41},
    }[p["method"], p["masks.source"]][p["loss.negative_groups"]],
    "single_view": lambda p: {
        "ground_truth": {False: 0.50, True: 0.50},
        "mcg": {False: 0.47, True: 0.46},
        "fh": {False: 0.45, True: 0.42},
        "grid": {False: 0.40, True: 0.37},
    }[p["masks.source"]][p["augment.single_view"]],
}
EPOCHS = [1, 2, 4, 8, 16]


def efficiency_points() -> list[dict[str, Any]]:
    """The sample_efficiency grid (method x optim.epochs); BYOL/SimCLR with image masks."""
    points = product(method=["detcon_b", "byol", "detcon_s", "simclr"], **{"optim.epochs": EPOCHS})
    for p in points:
        image = p["method"] in ("byol", "simclr")
        p |= {"masks.source": "image" if image else "fh", "masks.num_samples": 1 if image else 16}
    return points


def efficiency_miou(detcon: Mapping[int, float]) -> Callable[[Mapping[str, Any]], float]:
    """Baselines grow to 0.50 at 16 epochs; DetCon follows ``detcon`` (epochs -> mIoU)."""
    baseline = {1: 0.30, 2: 0.36, 4: 0.42, 8: 0.47, 16: 0.50}
    return lambda p: (
        detcon[p["optim.epochs"]]
        if p["method"].startswith("detcon")
        else baseline[p["optim.epochs"]]
    )


PAPER_EFFICIENCY = {1: 0.40, 2: 0.51, 4: 0.55, 8: 0.57, 16: 0.58}  # reaches 0.50 at 2 of 16


def write_world(folder: Path, world=PAPER_WORLD, efficiency=PAPER_EFFICIENCY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, miou in world.items():
        tidy(name, grid_points(name), miou).to_csv(folder / f"{name}.csv", index=False)
    table = tidy("sample_efficiency", efficiency_points(), efficiency_miou(efficiency))
    table.to_csv(folder / "sample_efficiency.csv", index=False)
    return folder


def by_key(results) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in results:
        out.setdefault(r.spec.key, []).append(r)
    return out


# --------------------------------------------------------------------------- every claim


def test_every_claim_is_reproduced_in_a_world_built_to_satisfy_it(tmp_path):
    tables = load_tables(write_world(tmp_path / "results"))
    assert set(tables) == {*PAPER_WORLD, "sample_efficiency"}
    results = evaluate_claims(tables, QUALITY)
    keys = [s.key for s in CLAIMS]
    assert len(keys) == len(set(keys)) and set(by_key(results)) == set(keys)
    wrong = [
        (r.spec.key, r.task, r.verdict, r.reason) for r in results if r.verdict != "reproduced"
    ]
    assert not wrong
    # Claim 1 has one row per dense task; the others test segmentation only.
    assert [r.task for r in by_key(results)["1a"]] == ["segmentation", "depth", "detection"]
    assert all(r.seeds == (3, 3) and r.paired for r in results)


def test_the_measurements_match_the_truth_and_the_references_give_the_share(tmp_path):
    results = by_key(evaluate_claims(load_tables(write_world(tmp_path)), QUALITY))
    seg = results["1a"][0]
    # Paired by seed: the per-seed offset cancels, only the +-0.001 jitter is left.
    assert seg.estimate == pytest.approx(0.05, abs=0.002)
    assert seg.ci[0] <= seg.estimate <= seg.ci[1] and seg.ci[1] - seg.ci[0] < 0.005
    assert (seg.floor, seg.ceiling) == pytest.approx((FLOOR, CEILING))
    assert seg.share == pytest.approx(0.05 / (CEILING - FLOOR), abs=0.01)
    assert results["4a"][0].estimate == pytest.approx(0.05, abs=0.002)  # ground truth 112 - 64
    assert results["4d"][0].estimate == pytest.approx(0.05, abs=0.002)  # ground truth 144 - 112
    assert results["5c"][0].estimate == pytest.approx(-0.029, abs=0.003)  # -0.03 - (-0.001)
    assert results["3a"][0].estimate == pytest.approx(0.2 * (0.66 - 0.51), abs=0.003)
    assert results["2a"][0].estimate == pytest.approx(2 / 16)
    assert results["3c"][0].share is None  # a correlation has no floor -> ceiling share


# --------------------------------------------------------------------------- verdict rule


def baselines(detcon_b: list[float], byol: list[float]) -> dict[str, pd.DataFrame]:
    """A baselines table whose DetCon-B / BYOL segmentation per seed is given."""
    per_seed = {"detcon_b": detcon_b, "byol": byol, "detcon_s": byol, "simclr": byol}
    points = [
        {"method": m, "masks.source": "fh", "seed": s} for s in SEEDS for m in per_seed
    ]  # fmt: skip
    miou = lambda p: per_seed[p["method"]][p["seed"]] - seed_offset(p["seed"])  # noqa: E731
    return {"baselines": tidy("baselines", points, miou, jitter=0.0)}


def claim_1a(tables, task="segmentation"):
    return next(r for r in evaluate_claims(tables, None) if r.spec.key == "1a" and r.task == task)


def test_a_clear_gain_is_reproduced_a_clear_loss_is_not_and_noise_is_inconclusive():
    byol = [0.40, 0.45, 0.43]
    gain = claim_1a(baselines([0.45, 0.50, 0.47], byol))
    assert gain.verdict == "reproduced" and gain.ci[0] > 0
    loss = claim_1a(baselines([0.35, 0.41, 0.38], byol))
    assert loss.verdict == "not reproduced" and loss.ci[1] < 0
    # Per-seed differences +0.05, -0.04, +0.01: the CI straddles 0.
    noisy = claim_1a(baselines([0.45, 0.41, 0.44], byol))
    assert noisy.verdict == "inconclusive" and noisy.ci[0] < 0 < noisy.ci[1]
    assert noisy.estimate == pytest.approx(np.mean([0.05, -0.04, 0.01]))


def test_one_seed_is_inconclusive_and_says_more_seeds_are_needed():
    tables = baselines([0.45, 0.50, 0.47], [0.40, 0.45, 0.43])
    tables["baselines"] = tables["baselines"][tables["baselines"]["seed"] == 0]
    r = claim_1a(tables)
    assert r.verdict == "inconclusive" and r.ci is None and r.seeds == (1, 1)
    assert "at least 2 seeds" in render_claims_markdown(tables, None)


def test_little_loss_claims_use_the_tolerance(tmp_path):
    spec = next(s for s in CLAIMS if s.key == "5a")  # DetCon-B, ground truth, negatives / 128
    assert spec.test == Criterion(">", -0.01)

    def verdict_for(*losses: float) -> str:
        """The verdict when ÷128 loses ``losses[seed]`` mIoU with DetCon-B and ground truth."""
        world = PAPER_WORLD["negatives"]
        worse = ("detcon_b", "ground_truth", 8)

        def miou(p):
            point = (p["method"], p["masks.source"], p["loss.negative_groups"])
            return world(p) + (0.001 - losses[p["seed"]] if point == worse else 0.0)

        tables = {"negatives": tidy("negatives", grid_points("negatives"), miou, jitter=0.0)}
        return next(r.verdict for r in evaluate_claims(tables, None, [spec]))

    assert verdict_for(0.001, 0.002, 0.0) == "reproduced"
    assert verdict_for(0.03, 0.025, 0.035) == "not reproduced"
    assert verdict_for(0.0, 0.02, 0.01) == "inconclusive"


# --------------------------------------------------------------------------- not run


def test_missing_ablations_and_points_are_not_run_and_render(tmp_path):
    folder = write_world(tmp_path / "results")
    (folder / "resolution.csv").unlink()
    negatives = pd.read_csv(folder / "negatives.csv")
    negatives[negatives["method"] != "detcon_s"].to_csv(folder / "negatives.csv", index=False)
    single = pd.read_csv(folder / "single_view.csv")
    single[single["task"] != "segmentation"].to_csv(folder / "single_view.csv", index=False)
    tables = load_tables(folder)
    results = by_key(evaluate_claims(tables, QUALITY))
    assert all(r.verdict == "not run" for k in "abcdef" for r in results[f"4{k}"])
    assert "no results table for ablation resolution" in results["4a"][0].reason
    assert results["5a"][0].verdict == "reproduced"
    assert results["5b"][0].verdict == "not run"
    assert results["5b"][0].reason == (
        "no segmentation miou rows for method=detcon_s, masks.source=ground_truth, "
        "loss.negative_groups=8; method=detcon_s, masks.source=ground_truth, "
        "loss.negative_groups=1"
    )
    assert results["6a"][0].verdict == "not run" and results["6a"][0].task == "segmentation"
    # Without the mask-quality table the correlation cannot be measured; the order can.
    no_quality = by_key(evaluate_claims(tables, None))
    assert no_quality["3c"][0].verdict == "not run" and no_quality["3a"][0].verdict == "reproduced"
    text = render_claims_markdown(tables, None)
    assert "`results/resolution.csv`: missing" in text and "mask quality: missing" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert sum("**not run**" in row for row in rows) == sum(
        r.verdict == "not run" for r in sum(no_quality.values(), [])
    )


def test_a_grid_with_other_levels_is_not_compared_with_itself():
    # Only two resolutions ran: "the largest" and "the middle" would be the same point.
    points = [p for p in grid_points("resolution") if p["augment.crop_size"] != 144]
    tables = {"resolution": tidy("resolution", points, PAPER_WORLD["resolution"])}
    results = evaluate_claims(tables, None, [s for s in CLAIMS if s.ablation == "resolution"])
    assert {r.verdict for r in results} == {"not run"}
    assert "augment.crop_size takes 2 value(s) (64, 112), expected 3" in results[0].reason


def test_nothing_at_all_renders_every_claim_as_not_run():
    text = render_claims_markdown({}, None)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "**" in line]
    assert rows and all("**not run**" in line for line in rows)
    assert text.startswith(BEGIN) and text.rstrip().endswith(END)


# --------------------------------------------------------------------------- statistics


def test_spearman_of_a_perfectly_ordered_toy_is_one_with_a_ci(tmp_path):
    quality = QUALITY["mean_best_iou"].to_numpy()
    assert spearman(quality, quality * 2 + 1)[0] == pytest.approx(1.0)
    assert spearman(quality, -quality)[0] == pytest.approx(-1.0)
    assert math.isnan(spearman(quality, np.ones(4))[0])
    results = by_key(evaluate_claims(load_tables(write_world(tmp_path)), QUALITY))
    rho = results["3c"][0]
    assert rho.estimate == pytest.approx(1.0) and rho.ci == pytest.approx((1.0, 1.0))
    assert rho.verdict == "reproduced"
    # Reversed quality: the same transfer now anti-correlates with it.
    reversed_quality = QUALITY.assign(mean_best_iou=1 - QUALITY["mean_best_iou"])
    anti = by_key(evaluate_claims(load_tables(tmp_path), reversed_quality))["3c"][0]
    assert anti.estimate == pytest.approx(-1.0) and anti.verdict == "not reproduced"


def test_the_sample_efficiency_ratio_on_toys(tmp_path):
    spec = next(s for s in CLAIMS if s.key == "2a")
    assert spec.measure == Efficiency("detcon_b", "byol") and spec.test == Criterion("<=", 0.2)

    def ratio(detcon: Mapping[int, float]):
        table = tidy("sample_efficiency", efficiency_points(), efficiency_miou(detcon))
        return next(iter(evaluate_claims({"sample_efficiency": table}, None, [spec])))

    early = ratio(PAPER_EFFICIENCY)  # 0.51 >= 0.50 at 2 epochs of 16
    assert early.estimate == pytest.approx(2 / 16) and early.verdict == "reproduced"
    late = ratio({1: 0.30, 2: 0.40, 4: 0.505, 8: 0.52, 16: 0.55})  # at 4 of 16: 1/4 > 1/5
    assert late.estimate == pytest.approx(4 / 16) and late.verdict == "not reproduced"
    never = ratio({1: 0.30, 2: 0.35, 4: 0.40, 8: 0.45, 16: 0.49})
    assert math.isinf(never.estimate) and never.verdict == "not reproduced"
    assert "not reached" in render_claims_markdown(
        {"sample_efficiency": tidy("sample_efficiency", efficiency_points(),
                                   efficiency_miou({1: 0.3, 2: 0.35, 4: 0.4, 8: 0.45, 16: 0.49}))},
        None,
    )  # fmt: skip
    # Right at the threshold, the seeds decide: DetCon-B at 2 epochs is 0.50 -0.003, +0.002,
    # +0.002 by seed against BYOL's 0.50 at 16, so the CI spans 2 and 4 epochs.
    table = tidy(
        "sample_efficiency",
        efficiency_points(),
        efficiency_miou({1: 0.30, 2: 0.50, 4: 0.55, 8: 0.56, 16: 0.57}),
        jitter=0.0,
    )
    at_2 = (table["method"] == "detcon_b") & (table["optim.epochs"] == 2)
    table.loc[at_2, "value"] += table.loc[at_2, "seed"].map({0: -0.003, 1: 0.002, 2: 0.002})
    (edge,) = evaluate_claims({"sample_efficiency": table}, None, [spec])
    assert edge.estimate == pytest.approx(2 / 16)
    assert edge.verdict == "inconclusive" and edge.ci == pytest.approx((2 / 16, 4 / 16))
    # a ratio on a grid of lengths does not narrow as 1/sqrt(seeds): no seed count is offered
    needed = render_claims_markdown({"sample_efficiency": table}, None, specs=[spec])
    assert "its CI does not: more seeds and lengths between" in needed
    assert "seeds per point (now" not in needed
    # A length the baseline ran and the method lacks would move the ratio to the method's next
    # length without a word: the claim is not run, and the missing length is named.
    table = tidy("sample_efficiency", efficiency_points(), efficiency_miou(PAPER_EFFICIENCY))
    gone = (table["method"] == "detcon_b") & (table["optim.epochs"] == 2)
    (holed,) = evaluate_claims({"sample_efficiency": table[~gone]}, None, [spec])
    assert holed.verdict == "not run" and holed.estimate is None
    assert "no detcon_b result at optim.epochs 2" in holed.reason
    # A baseline whose longest schedule does not beat random initialisation: reaching it shows
    # nothing (the random encoder does too), whatever the ratio.
    table = tidy("sample_efficiency", efficiency_points(), efficiency_miou(PAPER_EFFICIENCY))
    at_floor = (table["backbone"] == "random") & (table["task"] == "segmentation")
    table.loc[at_floor, "value"] = 0.50 + 0.001  # BYOL at 16 epochs: 0.50 (+ seed offsets)
    (vacuous,) = evaluate_claims({"sample_efficiency": table}, None, [spec])
    assert vacuous.estimate == pytest.approx(2 / 16) and vacuous.verdict == "inconclusive"
    assert vacuous.reason.startswith("byol's longest schedule (0.499) does not beat random")


def test_bootstrap_is_deterministic_and_pairs_only_shared_seeds():
    a = pd.Series([0.50, 0.60, 0.55], index=[0, 1, 2])
    b = pd.Series([0.45, 0.56, 0.50], index=[0, 1, 2])
    diff = lambda m: m[0] - m[1]  # noqa: E731
    first = bootstrap([a, b], diff)
    assert first == bootstrap([a, b], diff) and first[2] is True
    # Paired: with 3 seeds the CI is exactly the range of the per-seed differences 0.05, 0.04,
    # 0.05 (a resample repeating one seed has probability 1/27 > 2.5%), as VERDICT_RULE says.
    assert first[1] == pytest.approx((0.04, 0.05), abs=1e-12)
    unpaired = bootstrap([a, b.set_axis([3, 4, 5])], diff)
    assert unpaired[2] is False and unpaired[1][0] < 0  # the seed spread is no longer cancelled
    assert unpaired[0] == pytest.approx(first[0])


# --------------------------------------------------------------------------- reading tables


def test_a_table_without_a_column_names_the_file_and_the_column(tmp_path):
    table = tidy("baselines", grid_points("baselines"), PAPER_WORLD["baselines"])
    path = tmp_path / "baselines.csv"
    table.drop(columns=["git_commit"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"baselines\.csv: missing column\(s\) git_commit"):
        load_tables(tmp_path)
    table.drop(columns=["method"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"baselines\.csv: missing column\(s\) method"):
        load_tables(tmp_path)
    bad = table.astype({"value": object})
    bad.loc[3, "value"] = "n/a"
    bad.to_csv(path, index=False)
    with pytest.raises(
        ValueError, match=r"baselines\.csv: row 4 has value='n/a', expected a number"
    ):
        read_results_table(path)
    table.to_csv(tmp_path / "mask_type.csv", index=False)
    with pytest.raises(
        ValueError,
        match=r"mask_type\.csv: holds rows of ablation\(s\) baselines, not of 'mask_type' as its "
        r"name says.*keeps its name: baselines\.csv in a folder of its own",
    ):
        read_results_table(tmp_path / "mask_type.csv")
    with pytest.raises(ValueError, match="ablation baselines: missing column"):
        evaluate_claims({"baselines": table.drop(columns=["value"])}, None)


def test_a_state_column_keeps_only_done_rows(tmp_path):
    table = baselines([0.45, 0.50, 0.47], [0.40, 0.45, 0.43])["baselines"]
    table["state"] = "done"
    table.loc[table["method"] == "detcon_b", "state"] = "failed"
    table.to_csv(tmp_path / "baselines.csv", index=False)
    r = claim_1a(load_tables(tmp_path))
    assert r.verdict == "not run" and "detcon_b" in r.reason


def test_a_custom_spec_reads_literal_booleans_and_numbers_from_csv(tmp_path):
    # pandas writes True/1; the spec says true/1.0: both compare equal.
    spec = ClaimSpec(
        key="x",
        statement="toy",
        where="here",
        ablation="single_view",
        measure=Difference(
            {"masks.source": "grid", "augment.single_view": "true"},
            {"masks.source": "grid", "augment.single_view": False},
        ),
        test=Criterion("<", 0.0),
    )
    write_world(tmp_path)
    (r,) = evaluate_claims(load_tables(tmp_path, [spec]), None, [spec])
    assert r.verdict == "reproduced" and r.estimate == pytest.approx(-0.03, abs=0.002)


def test_a_difference_of_differences_subtracts_the_second_effect():
    # (first - second) - (minus[0] - minus[1]); the fixture's world is too small an effect to
    # tell the sign of the second difference (a swapped one passed every test)
    measure = Difference({"a": "1"}, {"a": "2"}, minus=({"a": "3"}, {"a": "4"}))
    assert measure.statistic(None, None)(np.array([1.0, 0.0, 0.0, 0.5])) == pytest.approx(1.5)
    assert Difference({}, {}).statistic(None, None)(np.array([1.0, 0.25])) == pytest.approx(0.75)


def test_the_floor_and_the_ceiling_are_their_seeds_mean():
    # per seed the mean of its rows, then the mean over seeds (the maximum passed every test:
    # the fixture's references did not vary by seed)
    table = pd.DataFrame(
        {
            "backbone": ["random"] * 3 + ["supervised"],
            "task": ["segmentation"] * 4,
            "metric": ["miou"] * 4,
            "seed": [0, 0, 1, 0],
            "value": [0.2, 0.4, 0.6, 0.9],
        }
    )
    assert _reference(table, "random", "segmentation", "miou") == pytest.approx(0.45)
    assert _reference(table, "supervised", "segmentation", "miou") == pytest.approx(0.9)
    assert _reference(table, "random", "depth", "miou") is None


# --------------------------------------------------------------------------- RESULTS.md


def test_the_block_replaces_only_the_text_between_the_markers():
    before = "# Mine\n\nIntro kept.\n\n"
    after = "\n## Notes\n\nKept too, with a trailing line.\n"
    doc = before + BEGIN + "\nold table\n" + END + "\n" + after
    block = BEGIN + "\nnew table\n" + END + "\n"
    assert replace_block(doc, block) == before + block + after
    assert replace_block(replace_block(doc, block), block) == before + block + after
    assert replace_block(None, block) == HEADER + block
    assert replace_block("# Mine\n", block) == "# Mine\n\n" + block
    for broken in (f"{BEGIN}\nno end\n", f"{END}\n{BEGIN}\n", f"{BEGIN}{BEGIN}{END}"):
        with pytest.raises(ValueError, match="RESULTS.md: expected one"):
            replace_block(broken, block)


def test_the_rendered_table_has_a_row_per_result_and_the_command():
    tables = baselines([0.45, 0.50, 0.47], [0.40, 0.45, 0.43])
    text = render_claims_markdown(tables, QUALITY)
    assert "`detcon claims --results results --out RESULTS.md`" in text
    row = next(line for line in text.splitlines() if line.startswith("| 1a (segmentation"))
    assert "+0.047 [+0.040, +0.050] mIoU (segmentation; 3 seeds, paired)" in row
    assert "**reproduced**" in row and "+12% of floor→ceiling (0.200→0.600)" in row
    assert "Verdict rule." in text and "commit(s) abc1234def" in text
    results = evaluate_claims(tables, QUALITY)
    assert sum(line.startswith("| ") for line in text.splitlines()) == len(results) + 1


def test_detcon_claims_rewrites_results_md_and_draws_the_scatter(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    tidy("mask_type", grid_points("mask_type"), PAPER_WORLD["mask_type"]).to_csv(
        folder / "mask_type.csv", index=False
    )
    quality = tmp_path / "mask_quality.csv"
    QUALITY.to_csv(quality, index=False)
    out = tmp_path / "RESULTS.md"
    out.write_text(f"# Ours\n\n{BEGIN}\nstale\n{END}\n\nTail.\n")
    argv = ["claims", "--results", str(folder), "--out", str(out), "--mask-quality", str(quality)]
    assert cli.main([*argv, "--figures-dir", str(tmp_path / "figs")]) == 0
    text = out.read_text()
    assert text.startswith("# Ours\n\n" + BEGIN) and text.endswith(END + "\n\nTail.\n")
    assert "stale" not in text and "![segmentation against mask quality" in text
    assert "(figs/claims_mask_quality.png)" in text
    # the block names the command that made it (it named the defaults whatever was given)
    made = (
        f"Regenerate with `detcon claims --results {folder.as_posix()} --out {out.as_posix()} "
        f"--mask-quality {quality.as_posix()} --figures-dir {(tmp_path / 'figs').as_posix()}`. "
    )
    assert made in text  # not "(`make figures` runs it)": that runs the defaults
    assert (tmp_path / "figs" / "claims_mask_quality.png").read_bytes()[:4] == b"\x89PNG"
    assert "4 reproduced" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.tmp"))

    fresh = tmp_path / "new" / "RESULTS.md"
    fresh.parent.mkdir()
    (tmp_path / "none").mkdir()  # no results yet
    assert cli.main(["claims", "--results", str(tmp_path / "none"), "--out", str(fresh),
                     "--no-figure"]) == 0  # fmt: skip
    assert fresh.read_text().startswith(HEADER) and "**not run**" in fresh.read_text()

    # a mistyped folder or table turned every verdict into "not run", or dropped the scatter
    before = out.read_text()
    for bad in (["--results", str(tmp_path / "reslts")], ["--mask-quality", str(tmp_path / "q")]):
        argv2 = ["claims", "--results", str(folder), "--out", str(out), *bad, "--no-figure"]
        assert cli.main(argv2) == 2
        assert "does not exist" in capsys.readouterr().err
    assert out.read_text() == before

    (folder / "mask_type.csv").write_text("ablation,run_id\nmask_type,x\n")
    assert cli.main([*argv, "--no-figure"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("detcon claims: error: ")
        and "mask_type.csv: missing column(s) seed, "
        "config_digest, git_commit, backbone, task, metric, value, masks.source, method;"
        in err
    )
