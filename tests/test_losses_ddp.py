"""``detcon_loss`` under torch.distributed (2 CPU processes, gloo) against one process.

Two ranks each hold half of a global batch of 8 images. The loss gathers the targets of both
ranks (release ``use_replicator_loss``); each rank's loss is the mean over its own slots, so the
global objective is the mean of the rank losses:

    L_global = (1/W) * sum_r L_r  ==  L_single(full batch)                                 (1)

Gradients. Each rank calls ``L_r.backward()`` on its own loss. For the inputs x_r it holds, the
prediction path gives dL_r/dx_r, and the differentiable gather's backward sums the target-path
gradients of *every* rank's loss back to the owner, so rank r obtains d(sum_s L_s)/dx_r:

    grad_r(x_r) / W  ==  dL_single/dx[rows of rank r]                                       (2)

(for DetCon-B the targets carry no gradient and (2) holds through the prediction path alone).
DDP then *averages* parameter gradients over ranks (its reducer all-reduces the sum and divides
by W), which turns the per-rank sums into the gradient of L_global:
(1/W) * sum_r d(sum_s L_s)/dtheta|_r = dL_global/dtheta, so

    all_reduce(grad_theta, SUM) / W  ==  dL_single/dtheta                                   (3)

The "param" scenarios check (3) with that all-reduce written out rather than through
``DistributedDataParallel``, whose construction imports torch._dynamo (3-5 s per process); the
same check through a real DDP wrapper passed when this file was written.
Everything runs in float64 so the comparisons are at rounding level.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from loss_oracle import detcon_loss_oracle

from detcon.losses import detcon_loss

torch.set_num_threads(1)

WORLD = 2
LOCAL_B, K, D, D_IN = 4, 3, 8, 5
IDS = ("pred_ids1", "pred_ids2", "target_ids1", "target_ids2")
SEED = 20240521

# (name, variant, negative_groups, same_image_negatives). Variant "B": targets carry no
# gradient (EMA network); "S": target = pred (DetCon-S, gradient through the gather);
# "param": a linear map shared by the ranks makes pred = target, and its gradient is averaged
# over ranks as DDP does.
SCENARIOS = [
    ("b_g1", "B", 1, True),
    ("b_g1_nolocal", "B", 1, False),
    ("s_g1", "S", 1, True),
    ("s_g1_nolocal", "S", 1, False),
    ("b_g2", "B", 2, True),  # one group per rank
    ("s_g2", "S", 2, True),
    ("b_g4", "B", 4, True),  # two groups per rank
    ("s_g4", "S", 4, False),
    ("s_g8", "S", 8, True),  # one image per group: own-image candidates only
    ("param_g1", "param", 1, True),
    ("param_g4", "param", 4, True),
]
INPUT_SCENARIOS = [s for s in SCENARIOS if s[1] != "param"]
PARAM_SCENARIOS = [s for s in SCENARIOS if s[1] == "param"]


def _full_inputs(seed: int) -> dict[str, np.ndarray]:
    """Global batch (W*LOCAL_B images): float64 vectors of mixed scale, ids with duplicates and
    with slots that have no positive in the other view, inputs and weight of the linear map."""
    rng = np.random.default_rng(seed)
    n = WORLD * LOCAL_B
    out = {}
    for name in ("pred1", "pred2", "target1", "target2"):
        out[name] = rng.standard_normal((n, K, D)) * np.exp(rng.uniform(-2, 2, (n, K, 1)))
    out["x1"], out["x2"] = rng.standard_normal((2, n, K, D_IN))
    out["weight"] = rng.standard_normal((D, D_IN))
    v1, v2 = rng.integers(0, 3, (n, K)), rng.integers(1, 4, (n, K))
    out.update(pred_ids1=v1, target_ids1=v1.copy(), pred_ids2=v2, target_ids2=v2.copy())
    return out


def _loss_and_grads(
    inputs: dict, variant: str, groups: int, sni: bool, rows: slice
) -> tuple[float, dict[str, np.ndarray]]:
    """Loss on ``rows`` of the inputs and the gradients this process sees: under a process
    group the targets are gathered, and the "param" gradient is averaged over ranks as DDP does.
    """
    t = {
        n: torch.from_numpy(np.ascontiguousarray(x[rows]))
        for n, x in inputs.items()
        if n != "weight"
    }
    ids = {n: t[n] for n in IDS}
    kw = dict(negative_groups=groups, same_image_negatives=sni, temperature=0.1)
    if variant == "param":
        weight = torch.from_numpy(inputs["weight"]).requires_grad_()
        z1, z2 = t["x1"] @ weight.T, t["x2"] @ weight.T
        loss = detcon_loss(pred1=z1, pred2=z2, target1=z1, target2=z2, **ids, **kw)
        loss.backward()
        grad = weight.grad
        if dist.is_initialized():  # DDP's gradient averaging
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
            grad /= dist.get_world_size()
        return loss.item(), {"weight": grad.numpy().copy()}
    p1, p2 = t["pred1"].requires_grad_(), t["pred2"].requires_grad_()
    t1, t2 = (p1, p2) if variant == "S" else (t["target1"], t["target2"])
    loss = detcon_loss(pred1=p1, pred2=p2, target1=t1, target2=t2, **ids, **kw)
    loss.backward()
    return loss.item(), {"pred1": p1.grad.numpy().copy(), "pred2": p2.grad.numpy().copy()}


def _worker(rank: int, init_file: str, out_dir: str, seed: int) -> None:
    """One rank: every scenario on its half of the batch; results to out_dir/rank{r}.npz."""
    torch.set_num_threads(1)
    # A timeout turns a collective mismatch into an error instead of a hung test.
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        inputs = _full_inputs(seed)
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        results = {}
        for name, variant, groups, sni in SCENARIOS:
            loss, grads = _loss_and_grads(inputs, variant, groups, sni, rows)
            results[f"{name}/loss"] = np.array(loss)
            results.update({f"{name}/grad/{n}": g for n, g in grads.items()})
        # Local batches of 3 (global 6) in 3 groups of 2: a group straddles the two ranks,
        # which the loss rejects rather than mis-computes.
        try:
            _loss_and_grads(inputs, "B", 3, True, slice(rank * 3, rank * 3 + 3))
            results["straddle/raised"] = np.array(False)
        except ValueError:
            results["straddle/raised"] = np.array(True)
        tmp = Path(out_dir) / f".rank{rank}.tmp.npz"
        np.savez(tmp, **results)
        os.replace(tmp, Path(out_dir) / f"rank{rank}.npz")  # atomic: the parent sees all or none
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict[str, np.ndarray]]:
    assert not dist.is_initialized()  # the single-process references below must not gather
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "pg"), str(tmp), SEED), nprocs=WORLD, join=True)
    out = []
    for rank in range(WORLD):
        with np.load(tmp / f"rank{rank}.npz") as f:
            out.append(dict(f))
    return out


@pytest.mark.parametrize("name,variant,groups,sni", SCENARIOS)
def test_rank_mean_loss_equals_single_process(rank_results, name, variant, groups, sni):
    inputs = _full_inputs(SEED)
    single, _ = _loss_and_grads(inputs, variant, groups, sni, slice(None))
    rank_losses = [r[f"{name}/loss"].item() for r in rank_results]
    assert np.mean(rank_losses) == pytest.approx(single, rel=1e-12)  # identity (1)
    assert rank_losses[0] != pytest.approx(rank_losses[1], rel=1e-6)  # the halves differ


@pytest.mark.parametrize("name,variant,groups,sni", INPUT_SCENARIOS)
def test_rank_loss_equals_oracle_with_gather(rank_results, name, variant, groups, sni):
    """Each rank's loss is the release's per-replica loss (gathered targets, offset r*B)."""
    inputs = _full_inputs(SEED)
    if variant == "S":
        inputs["target1"], inputs["target2"] = inputs["pred1"], inputs["pred2"]
    keys = ("pred1", "pred2", "target1", "target2") + IDS
    for rank in range(WORLD):
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        want = detcon_loss_oracle(
            **{n: inputs[n][rows] for n in keys},
            all_target1=inputs["target1"],
            all_target2=inputs["target2"],
            offset=rank * LOCAL_B,
            temperature=0.1,
            same_image_negatives=sni,
            negative_groups=groups,
        )
        assert rank_results[rank][f"{name}/loss"].item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("name,variant,groups,sni", INPUT_SCENARIOS)
def test_input_gradients_equal_single_process(rank_results, name, variant, groups, sni):
    inputs = _full_inputs(SEED)
    _, single = _loss_and_grads(inputs, variant, groups, sni, slice(None))
    for n in ("pred1", "pred2"):
        # identity (2): rank r's local gradient / W is the single-process gradient of its rows.
        got = np.concatenate([r[f"{name}/grad/{n}"] for r in rank_results]) / WORLD
        np.testing.assert_allclose(got, single[n], rtol=1e-9, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("name,variant,groups,sni", PARAM_SCENARIOS)
def test_averaged_parameter_gradient_equals_single_process(
    rank_results, name, variant, groups, sni
):
    inputs = _full_inputs(SEED)
    _, single = _loss_and_grads(inputs, variant, groups, sni, slice(None))
    for r in rank_results:  # identity (3): the rank average is the full-batch gradient
        np.testing.assert_allclose(
            r[f"{name}/grad/weight"], single["weight"], rtol=1e-9, atol=1e-12
        )


def test_groups_straddling_ranks_are_rejected(rank_results):
    assert all(r["straddle/raised"].item() for r in rank_results)
