"""Tests for ``detcon.losses``: agreement with the float64 release-structure oracle
(``tests/loss_oracle.py``), gradients, behaviour, argument checking, and ``byol_loss``."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from loss_oracle import detcon_loss_oracle, nt_xent

from detcon.losses import byol_loss, detcon_loss

torch.set_num_threads(1)

ID_MODES = ("dup", "missing", "identical", "distinct", "decoupled", "disjoint", "wide")
SCALES = (1e-3, 1.0, 1e3)


def make_ids(rng: np.random.Generator, mode: str, b: int, k: int) -> list[np.ndarray]:
    """Mask ids (pred_ids1, pred_ids2, target_ids1, target_ids2), each (B, K) int64.

    Online and target of a view share ids (docs/design.md §4.3) except in "decoupled", which checks
    the general semantics the release defines for four independent id arrays.
    """
    if mode == "dup":  # few ids: duplicates within a view are common
        v1, v2 = rng.integers(0, 3, (b, k)), rng.integers(0, 3, (b, k))
    elif mode == "missing":  # overlapping ranges: some slots have no positive in the other view
        v1, v2 = rng.integers(0, 4, (b, k)), rng.integers(2, 6, (b, k))
    elif mode == "identical":  # one id everywhere
        v1 = v2 = np.full((b, k), 7)
    elif mode == "distinct":  # mostly one slot per id
        v1 = np.stack([rng.permutation(4 * k)[:k] for _ in range(b)])
        v2 = np.stack([rng.permutation(4 * k)[:k] for _ in range(b)])
    elif mode == "decoupled":
        ids = [rng.integers(0, 4, (b, k)) for _ in range(4)]
        return [x.astype(np.int64) for x in ids]
    elif mode == "disjoint":  # no slot has a positive: the loss is exactly 0
        v1, v2 = rng.integers(0, 3, (b, k)), rng.integers(10, 13, (b, k))
    elif mode == "wide":  # large and negative ids
        pool = np.array([-(2**40), -3, 0, 255, 256, 2**40])
        v1, v2 = rng.choice(pool, (b, k)), rng.choice(pool, (b, k))
    else:
        raise AssertionError(mode)
    v1, v2 = v1.astype(np.int64), v2.astype(np.int64)
    return [v1, v2, v1.copy(), v2.copy()]


def make_vectors(rng: np.random.Generator, b: int, k: int, d: int, scale: float) -> np.ndarray:
    """(B, K, D) float32 with a global scale and a per-vector log-uniform factor in [0.1, 10]."""
    x = rng.standard_normal((b, k, d)) * scale
    x *= np.exp(rng.uniform(np.log(0.1), np.log(10.0), (b, k, 1)))
    return x.astype(np.float32)


def loss_inputs(rng, b, k, d, *, mode="dup", scale=1.0, detcon_s=False) -> dict[str, np.ndarray]:
    pred1, pred2 = make_vectors(rng, b, k, d, scale), make_vectors(rng, b, k, d, scale)
    if detcon_s:  # DetCon-S: one network, the targets are the predictions
        target1, target2 = pred1, pred2
    else:
        target1, target2 = make_vectors(rng, b, k, d, scale), make_vectors(rng, b, k, d, scale)
    pid1, pid2, tid1, tid2 = make_ids(rng, mode, b, k)
    return dict(
        pred1=pred1,
        pred2=pred2,
        target1=target1,
        target2=target2,
        pred_ids1=pid1,
        pred_ids2=pid2,
        target_ids1=tid1,
        target_ids2=tid2,
    )


def torch_loss(inputs: dict[str, np.ndarray], dtype=torch.float32, **kwargs) -> torch.Tensor:
    tensors = {}
    for name, x in inputs.items():
        t = torch.from_numpy(np.asarray(x))
        tensors[name] = t.to(dtype) if t.is_floating_point() else t
    return detcon_loss(**tensors, **kwargs)


def grid_cases() -> list[tuple]:
    """The agreement grid: every (B, K, D, temperature, same_image_negatives, G) combination,
    each with an id mode, scale and DetCon-S flag cycled through, plus a per-case seed."""
    cases = []
    for b, k, d, temp, sni in itertools.product(
        (1, 2, 5), (1, 3, 16), (2, 8, 32), (0.05, 0.1, 1.0), (True, False)
    ):
        for g in [g for g in range(1, b + 1) if b % g == 0]:
            i = len(cases)
            mode = ID_MODES[i % len(ID_MODES)]
            scale = SCALES[(i // len(ID_MODES)) % len(SCALES)]
            cases.append((b, k, d, temp, sni, g, mode, scale, i % 4 == 3, i))
    return cases


GRID = grid_cases()


@pytest.mark.parametrize("b,k,d,temp,sni,groups,mode,scale,detcon_s,seed", GRID)
def test_agrees_with_release_oracle(b, k, d, temp, sni, groups, mode, scale, detcon_s, seed):
    rng = np.random.default_rng(seed)
    inputs = loss_inputs(rng, b, k, d, mode=mode, scale=scale, detcon_s=detcon_s)
    kwargs = dict(temperature=temp, same_image_negatives=sni, negative_groups=groups)
    got = torch_loss(inputs, **kwargs)
    want = detcon_loss_oracle(**inputs, **kwargs)
    assert got.dtype == torch.float32 and got.shape == ()
    assert math.isfinite(want)
    # float32 vs float64: 1e-5 relative to the loss scale.
    assert abs(got.item() - want) <= 1e-5 * max(1.0, abs(want)), (got.item(), want)
    if mode == "disjoint":  # no slot has a positive: every weight is 0
        assert want == 0.0 and got.item() == 0.0


def test_grid_covers_the_brief():
    """The grid is what the docstring says: >= 250 cases, every id mode and scale, both flags."""
    assert len(GRID) >= 250
    assert {c[6] for c in GRID} == set(ID_MODES)
    assert {c[7] for c in GRID} == set(SCALES)
    assert {c[8] for c in GRID} == {True, False}
    assert {(c[0], c[5]) for c in GRID} == {(1, 1), (2, 1), (2, 2), (5, 1), (5, 5)}


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_agrees_with_oracle_dtype_float64(groups):
    """In float64 the agreement is at rounding level (guards against a tolerance hiding a bug)."""
    rng = np.random.default_rng(100 + groups)
    inputs = loss_inputs(rng, 6, 5, 8, mode="missing")
    for sni in (True, False):
        kwargs = dict(temperature=0.1, same_image_negatives=sni, negative_groups=groups)
        got = torch_loss(inputs, dtype=torch.float64, **kwargs).item()
        assert got == pytest.approx(detcon_loss_oracle(**inputs, **kwargs), rel=1e-12, abs=1e-12)


def test_oracle_replica_split_matches_single_process():
    """Oracle self-check: the mean of the per-replica losses (release gather + offset) is the
    one-process loss, for G=1, groups straddling replicas (G=2 with 3 replicas) and G=6."""
    rng = np.random.default_rng(7)
    full = loss_inputs(rng, 6, 4, 8, mode="dup")
    for groups, sni in itertools.product((1, 2, 3, 6), (True, False)):
        kw = dict(temperature=0.1, same_image_negatives=sni, negative_groups=groups)
        one = detcon_loss_oracle(**full, **kw)
        for world in (2, 3):
            b = 6 // world
            ranks = [
                detcon_loss_oracle(
                    **{n: x[r * b : (r + 1) * b] for n, x in full.items()},
                    all_target1=full["target1"],
                    all_target2=full["target2"],
                    offset=r * b,
                    **kw,
                )
                for r in range(world)
            ]
            assert np.mean(ranks) == pytest.approx(one, rel=1e-12)


# --- gradients -------------------------------------------------------------------------------


def _float64_case(seed: int, b=2, k=3, d=4, mode="dup"):
    rng = np.random.default_rng(seed)
    inputs = loss_inputs(rng, b, k, d, mode=mode)
    floats = {
        n: torch.from_numpy(inputs[n].astype(np.float64)).requires_grad_()
        for n in ("pred1", "pred2", "target1", "target2")
    }
    ids = {n: torch.from_numpy(inputs[n]) for n in inputs if "ids" in n}
    return inputs, floats, ids


@pytest.mark.parametrize("sni", [True, False])
@pytest.mark.parametrize("detcon_s", [False, True])
def test_gradcheck(sni, detcon_s):
    _, floats, ids = _float64_case(1, mode="missing")
    ids["pred_ids1"][0, 0] = ids["pred_ids1"][0, 1]  # a duplicated id in view 1

    def f(p1, p2, t1, t2):
        if detcon_s:
            t1, t2 = p1, p2
        return detcon_loss(
            pred1=p1,
            pred2=p2,
            target1=t1,
            target2=t2,
            **ids,
            temperature=0.5,
            same_image_negatives=sni,
        )

    args = tuple(floats[n] for n in ("pred1", "pred2", "target1", "target2"))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("sni", [True, False])
@pytest.mark.parametrize("groups", [1, 3])
def test_gradient_matches_oracle_finite_differences(sni, groups):
    inputs, floats, ids = _float64_case(2, b=3, k=3, d=3)
    kw = dict(temperature=0.2, same_image_negatives=sni, negative_groups=groups)
    detcon_loss(**floats, **ids, **kw).backward()
    h = 1e-6
    for name in ("pred1", "pred2", "target1", "target2"):
        base = inputs[name].astype(np.float64)
        fd = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            plus, minus = base.copy(), base.copy()
            plus[idx] += h
            minus[idx] -= h
            fd[idx] = (
                detcon_loss_oracle(**{**inputs, name: plus}, **kw)
                - detcon_loss_oracle(**{**inputs, name: minus}, **kw)
            ) / (2 * h)
        np.testing.assert_allclose(
            floats[name].grad.numpy(), fd, atol=1e-7, rtol=1e-5, err_msg=name
        )
        assert np.abs(fd).max() > 1e-3  # the input matters: a check that can fail


# --- behaviour -------------------------------------------------------------------------------


@pytest.mark.parametrize("sni", [True, False])
def test_invariant_to_permuting_images(sni):
    rng = np.random.default_rng(3)
    inputs = loss_inputs(rng, 6, 4, 8, mode="dup")
    base = torch_loss(inputs, same_image_negatives=sni).item()
    perm = rng.permutation(6)
    permuted = {n: x[perm] for n, x in inputs.items()}
    assert torch_loss(permuted, same_image_negatives=sni).item() == pytest.approx(base, rel=1e-6)
    # With G=2 the groups are {0,1,2} and {3,4,5}: permuting within and across groups is fine.
    grouped = torch_loss(inputs, same_image_negatives=sni, negative_groups=2).item()
    perm = np.concatenate([3 + rng.permutation(3), rng.permutation(3)])
    permuted = {n: x[perm] for n, x in inputs.items()}
    got = torch_loss(permuted, same_image_negatives=sni, negative_groups=2).item()
    assert got == pytest.approx(grouped, rel=1e-6)
    assert grouped != pytest.approx(base, rel=1e-3)  # the grouping does change the loss


@pytest.mark.parametrize("sni", [True, False])
def test_invariant_to_relabelling_ids(sni):
    """Ids only matter through equality within an image: any injective map, even a different
    one per image, leaves the loss unchanged."""
    rng = np.random.default_rng(4)
    inputs = loss_inputs(rng, 4, 6, 8, mode="missing")
    base = torch_loss(inputs, same_image_negatives=sni).item()
    global_map = {i: int(v) for i, v in enumerate(rng.choice(10**9, 6, replace=False) - 5 * 10**8)}
    per_image = [dict(enumerate(rng.permutation(6) * 1000 + 1)) for _ in range(4)]
    for relabel in (lambda i, x: global_map[x], lambda i, x: per_image[i][x]):
        new = dict(inputs)
        for n in ("pred_ids1", "pred_ids2", "target_ids1", "target_ids2"):
            new[n] = np.array([[relabel(i, x) for x in row] for i, row in enumerate(inputs[n])])
        assert torch_loss(new, same_image_negatives=sni).item() == pytest.approx(base, rel=1e-6)
    # A non-injective map (merging two ids) does change it.
    merged = {n: (np.minimum(x, 3) if "ids" in n else x) for n, x in inputs.items()}
    assert torch_loss(merged, same_image_negatives=sni).item() != pytest.approx(base, rel=1e-3)


@pytest.mark.parametrize("temp", [0.1, 0.5])
@pytest.mark.parametrize("b", [1, 4])
def test_one_whole_image_mask_is_simclr(temp, b):
    """K=1 with one id per image and target = pred is SimCLR's NT-Xent (docs/design.md §4.11):
    each query sees 2B-1 candidates (its own same-view vector removed), directions summed."""
    rng = np.random.default_rng(5)
    z1, z2 = rng.standard_normal((b, 16)), rng.standard_normal((b, 16))
    ids = torch.zeros(b, 1, dtype=torch.long)
    p1, p2 = torch.tensor(z1[:, None]), torch.tensor(z2[:, None])
    for sni in (True, False):  # with one mask per image there are no other same-image masks
        got = detcon_loss(
            pred1=p1,
            pred2=p2,
            target1=p1,
            target2=p2,
            pred_ids1=ids,
            pred_ids2=ids,
            target_ids1=ids,
            target_ids2=ids,
            temperature=temp,
            same_image_negatives=sni,
        )
        assert got.item() == pytest.approx(nt_xent(z1, z2, temp), rel=1e-10)


def test_loss_decreases_as_positives_align():
    """Moving each prediction towards its positive (the other view's target of the same mask)
    lowers the loss monotonically."""
    rng = np.random.default_rng(6)
    b, k, d = 4, 5, 32
    inputs = loss_inputs(rng, b, k, d, mode="distinct")
    inputs["pred_ids2"] = inputs["target_ids2"] = inputs["pred_ids1"].copy()  # every slot: 1 pos
    unit = {
        n: inputs[n] / np.linalg.norm(inputs[n], axis=-1, keepdims=True)
        for n in ("pred1", "pred2", "target1", "target2")
    }
    losses = []
    for alpha in np.linspace(0.0, 1.0, 6):
        step = dict(inputs)
        step["pred1"] = (1 - alpha) * unit["pred1"] + alpha * unit["target2"]
        step["pred2"] = (1 - alpha) * unit["pred2"] + alpha * unit["target1"]
        losses.append(torch_loss(step, temperature=0.1).item())
    assert all(a > b for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.5 * losses[0]


def test_keyword_only():
    rng = np.random.default_rng(8)
    inputs = {n: torch.from_numpy(x) for n, x in loss_inputs(rng, 2, 3, 4).items()}
    with pytest.raises(TypeError):
        detcon_loss(*inputs.values())
    with pytest.raises(TypeError):
        byol_loss(inputs["pred1"], inputs["pred2"], inputs["target1"], inputs["target2"])


FLOAT_ARGS = ("pred1", "pred2", "target1", "target2")
ID_ARGS = ("pred_ids1", "pred_ids2", "target_ids1", "target_ids2")


@pytest.mark.parametrize("name", FLOAT_ARGS + ID_ARGS)
def test_bad_shape_or_dtype_names_the_argument(name):
    rng = np.random.default_rng(9)
    inputs = {n: torch.from_numpy(x) for n, x in loss_inputs(rng, 2, 3, 4).items()}
    bad_shape = inputs[name][:, :2] if name != "pred1" else inputs[name][0]
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        detcon_loss(**{**inputs, name: bad_shape})
    bad_dtype = inputs[name].long() if name in FLOAT_ARGS else inputs[name].float()
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        detcon_loss(**{**inputs, name: bad_dtype})


@pytest.mark.parametrize("groups", [0, -1, 4])
def test_bad_negative_groups(groups):
    rng = np.random.default_rng(10)
    inputs = {n: torch.from_numpy(x) for n, x in loss_inputs(rng, 6, 2, 4).items()}
    with pytest.raises(ValueError, match="negative_groups"):
        detcon_loss(**inputs, negative_groups=groups)


def test_tiny_vectors_normalised_as_release():
    rng = np.random.default_rng(11)
    inputs = loss_inputs(rng, 2, 3, 4, scale=1e-8)  # norms ~1e-8, below the release's 1e-6
    want = detcon_loss_oracle(**inputs)
    got = torch_loss(inputs, dtype=torch.float64).item()
    assert got == pytest.approx(want, rel=1e-6)


def test_float16_inputs_give_a_finite_loss():
    rng = np.random.default_rng(13)
    inputs = loss_inputs(rng, 2, 3, 8, mode="dup")
    want = detcon_loss_oracle(**inputs, same_image_negatives=False)
    got = torch_loss(inputs, dtype=torch.float16, same_image_negatives=False).item()
    assert got == pytest.approx(want, rel=1e-2)


# --- byol_loss -------------------------------------------------------------------------------


def test_byol_loss_hand_case():
    """2 - 2cos per pair, mean over the batch, both directions summed."""
    pred1 = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    target2 = torch.tensor([[0.0, 5.0], [1.0, 0.0]])  # cos 0 and 1: terms 2 and 0
    pred2 = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    target1 = torch.tensor([[2.0, 0.0], [0.0, -1.0]])  # cos 1/sqrt2 and -1: 2-sqrt2 and 4
    want = (2 + 0) / 2 + (2 - math.sqrt(2) + 4) / 2
    got = byol_loss(pred1=pred1, pred2=pred2, target1=target1, target2=target2)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_byol_loss_zero_for_matching_inputs():
    rng = np.random.default_rng(12)
    a = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((3, 4, 8))), dim=-1)
    c = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((3, 4, 8))), dim=-1)
    loss = byol_loss(pred1=a, pred2=c, target1=c, target2=a)
    assert abs(loss.item()) < 1e-12
    assert byol_loss(pred1=a, pred2=c, target1=a, target2=c).item() > 0.1


def test_byol_loss_shape_mismatch_names_argument():
    a = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"\btarget2\b"):
        byol_loss(pred1=a, pred2=a, target1=a, target2=torch.zeros(2, 4))


def test_second_derivatives_are_refused_not_wrong():
    """The loss's backward is matrix products on saved softmax terms: differentiating it again
    would be wrong, so it raises (nothing in training needs it)."""
    _, floats, ids = _float64_case(0)
    loss = detcon_loss(**floats, **ids)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(loss, floats["pred1"], create_graph=True)
    (grad,) = torch.autograd.grad(loss, floats["pred1"])  # first derivatives as usual
    assert torch.isfinite(grad).all()
