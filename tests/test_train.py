"""The training loop: every method learns, resume is exact (also after a kill), DDP == 1 process."""

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from detcon.config import load_pretrain_config
from detcon.evaluate.backbones import weights_need_tf_same
from detcon.train import NonFiniteLossError, load_checkpoint, pretrain

TINY = {
    "data": {"num_images": 16, "scene_size": 32},
    "masks": {"fh_min_size": 16},
    "augment": {"crop_size": 32},
    "model": {"small_width": 4, "head_hidden": 32, "head_out": 16},
    "optim": {"batch_size": 4, "epochs": 2},
    "train": {"checkpoint_every": 2, "threads": 1},
}
NO_PHOTOMETRIC = {
    "augment": {
        "color_jitter_prob": 0.0,
        "grayscale_prob": 0.0,
        "blur_prob": [0.0, 0.0],
        "solarize_prob": [0.0, 0.0],
    }
}


def tiny_cfg(**overrides):
    from detcon.config import merge

    return load_pretrain_config(merge(TINY, overrides), profile="cpu")


def _final_state(run: Path) -> dict:
    return load_checkpoint(run / "checkpoint.pt")["model"]


def _assert_same_state(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k].float(), b[k].float(), atol=atol, rtol=1e-4, msg=k)


def test_batches_run_over_the_repeated_dataset_as_the_release():
    """floor(E*N/B) steps over the concatenated epoch permutations: a batch may span two epochs,
    every image is seen once per epoch, nothing is dropped; ranks split the global batch."""
    from detcon.config import OptimConfig, total_steps
    from detcon.data.pretrain import StepBatchSampler

    n, batch, epochs = 10, 4, 3
    steps = total_steps(OptimConfig(batch_size=batch, epochs=epochs), n)
    assert steps == 7  # 30 // 4; the old E * (N // B) accounting gave 6 and skipped 6 images
    items = [it for b in StepBatchSampler(n, batch, 0, 0, steps) for it in b]
    assert len(items) == 28
    for e in range(2):
        epoch_items = items[e * n : (e + 1) * n]
        assert {ep for ep, _ in epoch_items} == {e}
        assert sorted(i for _, i in epoch_items) == list(range(n))  # a permutation per epoch
    assert [ep for ep, _ in items[8:12]] == [0, 0, 1, 1]  # step 2 spans epochs 0 and 1
    assert [i for _, i in items[:n]] != [i for _, i in items[n : 2 * n]]  # reshuffled
    # a resumed sampler and two ranks see the same items
    tail = [it for b in StepBatchSampler(n, batch, 0, 3, steps) for it in b]
    assert tail == items[12:]
    halves = [list(StepBatchSampler(n, batch, 0, 0, steps, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == list(StepBatchSampler(n, batch, 0, 0, steps))


@pytest.mark.parametrize(
    "method,source,k",
    [("detcon_b", "fh", 4), ("detcon_s", "fh", 4), ("byol", "image", 1), ("simclr", "image", 1)],
)
def test_every_method_lowers_its_loss_on_a_fixed_batch(method, source, k):
    """A few steps at one fixed batch (one epoch of 4 images) drive the loss down."""
    from detcon.data.pretrain import build_pretrain_dataset, collate_views
    from detcon.models import PretrainModel
    from detcon.optim import LARS, param_groups

    torch.manual_seed(0)
    cfg = tiny_cfg(method=method, masks={"source": source, "num_samples": k}, **NO_PHOTOMETRIC)
    ds = build_pretrain_dataset(cfg)
    batch = collate_views([ds[(0, i)] for i in range(4)])
    from detcon.augment import normalize

    x = [normalize(batch[f"view{v}"].float() / 255) for v in (1, 2)]
    masks = [batch["masks1"], batch["masks2"]]
    u = [torch.rand(4, k, generator=torch.Generator().manual_seed(v)) for v in (1, 2)]
    model = PretrainModel(cfg)
    opt = LARS(param_groups(model.online_modules(), 0.0), lr=2.0, trust_coefficient=0.02)
    losses = []
    for _ in range(12):
        loss = model(x, masks, u)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_target(0.9)
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_metrics_checkpoint_and_summary(tmp_path):
    cfg = tiny_cfg(train={"max_steps": 3, "checkpoint_every": 2, "threads": 1})
    result = pretrain(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert {"loss", "lr", "tau", "normalized_proj_std", "images_per_s"} <= rows[0].keys()
    # step s trains at the schedules' value of s (the values of s + 1 passed every test)
    from detcon.config import scaled_lr, total_steps, warmup_steps
    from detcon.optim import learning_rate, target_ema

    n, o = cfg.data.num_images, cfg.optim
    assert warmup_steps(o, n) > 0 and rows[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert rows[0]["tau"] == pytest.approx(o.base_ema)
    for r in rows:
        assert r["lr"] == pytest.approx(
            learning_rate(
                r["step"],
                scaled_lr=scaled_lr(o),
                total_steps=total_steps(o, n),
                warmup_steps=warmup_steps(o, n),
            )
        )
        assert r["tau"] == pytest.approx(
            target_ema(r["step"], base_ema=o.base_ema, total_steps=total_steps(o, n))
        )
    assert result.steps == 3 and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    assert json.loads((tmp_path / "train_summary.json").read_text())["steps"] == 3
    assert json.loads((tmp_path / "config.json").read_text())["method"] == "detcon_b"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_a_start_removes_the_temp_files_a_killed_write_left(tmp_path):
    # What a kill during torch.save of the checkpoint leaves: it used to stay forever.
    stale = tmp_path / ".checkpoint.pt.k2x_9q0a.tmp"
    stale.write_bytes(b"\0" * 4096)
    trim = tmp_path / ".metrics.jsonl.p1q2r3s4.tmp"  # a kill while a resume trimmed the log
    trim.write_text('{"step": 0')
    others = tmp_path / ".eval.json.0f3a9c1e.tmp"  # not a file pretraining writes: kept
    others.write_bytes(b"{")
    pretrain(tiny_cfg(train={"max_steps": 1, "threads": 1}), tmp_path, progress=False)
    assert not stale.exists() and not trim.exists() and others.exists()


def test_resuming_keeps_the_steps_before_the_checkpoint_and_drops_what_is_not_a_step(tmp_path):
    from detcon.train import _truncate_metrics

    log = tmp_path / "metrics.jsonl"
    lines = ['{"step": 0}', "5", '"text"', '{"step": "1"}', '{"step": true}', '{"loss": 1}']
    log.write_text("\n".join([*lines, '{"step": 1}', '{"step": 2}', '{"step": 3']) + "\n")
    _truncate_metrics(log, 2)  # a bare number in the log was a TypeError traceback
    assert log.read_text() == '{"step": 0}\n{"step": 1}\n'


@pytest.mark.parametrize("optimizer", ["lars", "adamw"])
def test_resume_gives_the_same_final_weights(tmp_path, optimizer):
    cfg = tiny_cfg(
        optim={"optimizer": optimizer}, train={"max_steps": 6, "checkpoint_every": 2, "threads": 1}
    )
    pretrain(cfg, tmp_path / "straight", progress=False)
    first = pretrain(cfg, tmp_path / "resumed", progress=False, stop_after=3)
    assert first.steps == 3 and not (tmp_path / "resumed" / "train_summary.json").exists()
    sidecar = tmp_path / "resumed" / "backbone.json"  # which step backbone.pt is from
    assert json.loads(sidecar.read_text()) == {"step": 3, "planned_steps": 6}
    second = pretrain(cfg, tmp_path / "resumed", progress=False)
    assert second.resumed_from == 3 and second.steps == 6
    assert json.loads(sidecar.read_text()) == {"step": 6, "planned_steps": 6}
    assert not weights_need_tf_same(tmp_path / "resumed")  # the same file an import writes
    _assert_same_state(_final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed"))
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "metrics.jsonl").open()]
    assert steps == list(range(6))
    # the global RNG state saved is the uninterrupted run's (the loader drew from it at each start)
    assert torch.equal(
        load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["torch_rng"],
        load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["torch_rng"],
    )
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["optimizer"]["state"]
    assert {"lars": {"momentum_buffer"}, "adamw": {"step", "exp_avg", "exp_avg_sq"}}[
        optimizer
    ] == set(next(iter(saved.values())))


def test_the_summary_of_a_resumed_run_spans_every_step(tmp_path):
    # final_loss was the mean of the last segment's losses only, wall_s its time only.
    cfg = tiny_cfg(train={"max_steps": 6, "checkpoint_every": 2, "threads": 1})
    straight = pretrain(cfg, tmp_path / "straight", progress=False)
    first = pretrain(cfg, tmp_path / "resumed", progress=False, stop_after=5)
    second = pretrain(cfg, tmp_path / "resumed", progress=False)
    summary = json.loads((tmp_path / "resumed" / "train_summary.json").read_text())
    assert second.final_loss == straight.final_loss == summary["final_loss"]
    assert summary["wall_s"] == second.wall_s > first.wall_s
    assert summary["resumed_from"] == 5


def test_a_kill_between_the_last_checkpoint_and_the_summary_loses_no_figure(tmp_path):
    # The rerun trained no step and wrote final_loss NaN and images_per_s 0 into the summary.
    cfg = tiny_cfg(train={"max_steps": 3, "threads": 1})
    pretrain(cfg, tmp_path, progress=False)
    summary = tmp_path / "train_summary.json"
    before = json.loads(summary.read_text())
    summary.unlink()  # what a kill just after the final checkpoint leaves
    pretrain(cfg, tmp_path, progress=False)
    after = json.loads(summary.read_text())
    assert after["final_loss"] == before["final_loss"] and math.isfinite(after["final_loss"])
    assert after["wall_s"] >= before["wall_s"] * 0.5 and after["images_per_s"] > 0
    assert after["steps"] == 3 and after["resumed_from"] == 3


def test_a_start_from_step_0_beside_an_earlier_encoders_outputs_is_refused(tmp_path):
    # With its checkpoint moved away (the advice for a damaged one), a run trained from step 0
    # beside the old backbone.pt, train_summary.json and eval.json: until it finished they
    # passed for its own, and an evaluation with the same step count kept old entries.
    cfg = tiny_cfg(train={"max_steps": 2, "threads": 1})
    pretrain(cfg, tmp_path, progress=False)
    (tmp_path / "eval.json").write_text("{}")
    (tmp_path / "checkpoint.pt").rename(tmp_path / "checkpoint.pt.bad")
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError) as info:
        pretrain(tiny_cfg(seed=1, train={"max_steps": 2, "threads": 1}), tmp_path, progress=False)
    msg = str(info.value)
    assert "backbone.json, backbone.pt, eval.json, train_summary.json" in msg
    assert "no checkpoint.pt to resume from" in msg and "mv " in msg
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == kept
    (tmp_path / "previous").mkdir()
    for name in ("backbone.json", "backbone.pt", "eval.json", "train_summary.json"):
        (tmp_path / name).rename(tmp_path / "previous" / name)
    assert pretrain(cfg, tmp_path, progress=False).steps == 2


def test_stop_after_below_the_checkpoint_step_trains_nothing_and_keeps_the_step(tmp_path):
    # `pretrain --stop-after 1` on a run at step 3 recorded step 1 beside step 3's weights: the
    # next resume trained steps 1 and 2 again on top of them.
    cfg = tiny_cfg(train={"max_steps": 3, "threads": 1})
    pretrain(cfg, tmp_path, progress=False)
    summary = (tmp_path / "train_summary.json").read_text()
    result = pretrain(cfg, tmp_path, progress=False, stop_after=1)
    assert result.steps == 3 and result.resumed_from == 3
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    assert json.loads((tmp_path / "backbone.json").read_text()) == {"step": 3, "planned_steps": 3}
    assert (tmp_path / "train_summary.json").read_text() == summary


def test_resume_after_a_kill_gives_the_same_final_weights(tmp_path):
    """SIGKILL a real `detcon pretrain` process after its first checkpoint, then rerun it."""
    cfg_args = [
        "--set",
        "data.num_images=16",
        "--set",
        "data.scene_size=32",
        "--set",
        "masks.fh_min_size=16",
        "--set",
        "augment.crop_size=32",
        "--set",
        "model.small_width=4",
        "--set",
        "model.head_hidden=32",
        "--set",
        "model.head_out=16",
        "--set",
        "optim.batch_size=4",
        "--set",
        "optim.epochs=2",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.threads=1",
        "--set",
        "train.max_steps=8",
    ]
    cmd = [sys.executable, "-m", "detcon", "pretrain", "--profile", "cpu", "--quiet", *cfg_args]
    subprocess.run([*cmd, "--out", str(tmp_path / "straight")], check=True, timeout=300)

    run = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(run)])
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoint.pt").exists():
        time.sleep(0.05)
    assert (run / "checkpoint.pt").exists(), "no checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(run / "checkpoint.pt")["step"]
    assert killed_at < 8, "the run finished before it could be killed; make it longer"
    subprocess.run([*cmd, "--out", str(run)], check=True, timeout=300)
    _assert_same_state(_final_state(tmp_path / "straight"), _final_state(run))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_cfg(train={"max_steps": 6, "checkpoint_every": 2, "threads": 1})
    pretrain(cfg, tmp_path, progress=False, stop_after=2)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    from detcon import models

    real = models.PretrainModel.forward

    def poisoned(self, *a, **kw):
        out = real(self, *a, **kw)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(models.PretrainModel, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 2.*, step 2\) is kept"):
        pretrain(cfg, tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == good


@pytest.mark.parametrize("where", ["running_var", "weight"])
def test_a_state_that_is_not_finite_is_never_saved(tmp_path, monkeypatch, where):
    """A step's loss is checked before its update: an update, or the BatchNorm statistics of its
    forward pass, that leaves the state non-finite was saved over the good checkpoint, and at the
    end of a run exported as a finished encoder that evaluation read as real numbers."""
    from detcon import train

    cfg = tiny_cfg(train={"max_steps": 6, "checkpoint_every": 2, "threads": 1})
    pretrain(cfg, tmp_path, progress=False, stop_after=2)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    real = train.train_step

    def blows_up(model, optimizer, batch, step, ctx):
        result = real(model, optimizer, batch, step, ctx)
        if step == 3:
            tensor = next(t for n, t in model.state_dict().items() if n.endswith(where))
            tensor.view(-1)[0] = float("inf")  # as an overflowing update or variance leaves it
        return result

    monkeypatch.setattr(train, "train_step", blows_up)
    with pytest.raises(
        NonFiniteLossError,
        match=rf"state is not finite after step 3 \(model\.\S*{where}\).*, step 2\) is kept",
    ):
        pretrain(cfg, tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert not (tmp_path / "train_summary.json").exists()
    # the last step's update too: nothing passes for a finished run
    for name in ("checkpoint.pt", "backbone.pt", "backbone.json", "metrics.jsonl"):
        (tmp_path / name).unlink(missing_ok=True)
    fresh = tiny_cfg(train={"max_steps": 4, "checkpoint_every": 20, "threads": 1})
    with pytest.raises(NonFiniteLossError, match=r"No checkpoint was saved: a rerun into"):
        pretrain(fresh, tmp_path, progress=False)
    assert not any((tmp_path / n).exists() for n in ("checkpoint.pt", "backbone.pt"))
    assert not (tmp_path / "train_summary.json").exists()


def test_resume_with_a_different_config_is_refused(tmp_path):
    pretrain(tiny_cfg(train={"max_steps": 2, "threads": 1}), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"different config \(checkpoint -> now: seed: 0 -> 1\)"):
        pretrain(tiny_cfg(seed=1, train={"max_steps": 2, "threads": 1}), tmp_path, progress=False)


def test_resume_on_a_dataset_of_another_size_is_refused(tmp_path, monkeypatch):
    """An image folder that gained or lost images between a kill and the resume: the schedule's
    length moved under the run (steps 0-3 on one schedule, the rest on another; a shrunken
    folder left a run that could never finish). Not in the config: the checkpoint records it."""
    import detcon.train

    cfg = tiny_cfg(train={"max_steps": 4, "threads": 1})
    pretrain(cfg, tmp_path, progress=False, stop_after=2)
    real = detcon.train.build_pretrain_dataset

    class Fewer:
        def __init__(self, dataset):
            self.dataset = dataset

        def __len__(self):
            return len(self.dataset) - 4

        def __getattr__(self, name):
            return getattr(self.dataset, name)

    monkeypatch.setattr(detcon.train, "build_pretrain_dataset", lambda c: Fewer(real(c)))
    with pytest.raises(ValueError, match="while the dataset held 16 images; it holds 12 now"):
        pretrain(cfg, tmp_path, progress=False)


def test_a_checkpoint_of_another_code_version_is_named(tmp_path):
    from detcon.atomic import save_torch

    cfg = tiny_cfg(train={"max_steps": 2, "threads": 1})
    pretrain(cfg, tmp_path, progress=False, stop_after=1)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    ckpt["config"]["train"]["old_field"] = 1  # a field a later version renamed
    save_torch(tmp_path / "checkpoint.pt", ckpt)
    with pytest.raises(ValueError, match=r"checkpoint\.pt holds a config this code does not read"):
        pretrain(cfg, tmp_path, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str, method: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        pretrain(_ddp_cfg(method), out, progress=False)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _ddp_cfg(method: str):
    source, k = ("fh", 4) if method.startswith("detcon") else ("image", 1)
    # LARS without warmup: the first step moves the weights by an amount that depends on the
    # averaged gradient. (With the cpu profile's AdamW and warmup, step 0 had lr 0 and AdamW
    # ignores the gradient's scale: the test passed with the all-reduce removed.)
    return tiny_cfg(
        method=method,
        masks={"source": source, "num_samples": k},
        optim={"optimizer": "lars", "base_lr": 0.2, "warmup_epochs": 0},
        train={"max_steps": 2, "threads": 1},
        **NO_PHOTOMETRIC,
    )


@pytest.mark.parametrize("method", ["detcon_b", "detcon_s"])
def test_two_process_gloo_equals_one_process(tmp_path, method):
    """Global batch 4 split over 2 gloo ranks: same loss curve and same weights after 2 steps
    (targets gathered, gradients averaged, BatchNorm statistics across ranks)."""
    pretrain(_ddp_cfg(method), tmp_path / "single", progress=False)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), method), nprocs=2)
    one = [json.loads(x)["loss"] for x in (tmp_path / "single" / "metrics.jsonl").open()]
    two = [json.loads(x)["loss"] for x in (tmp_path / "ddp" / "metrics.jsonl").open()]
    assert one == pytest.approx(two, rel=1e-4, abs=1e-5)
    _assert_same_state(_final_state(tmp_path / "single"), _final_state(tmp_path / "ddp"), atol=1e-5)


# ------------------------------------------------------------------ one writer, user errors

TINY_ARGS = [
    "--quiet",
    *("--set", "data.num_images=16", "--set", "data.scene_size=32"),
    *("--set", "masks.fh_min_size=16", "--set", "augment.crop_size=32"),
    *("--set", "model.small_width=4", "--set", "model.head_hidden=32"),
    *("--set", "model.head_out=16", "--set", "optim.batch_size=4", "--set", "optim.epochs=2"),
    *("--set", "train.checkpoint_every=2", "--set", "train.threads=1"),
    *("--set", "data.num_workers=0"),
]


def _cli(capsys, *argv):
    """``detcon pretrain ...`` in this process: (exit code, stderr)."""
    from detcon.cli import main

    capsys.readouterr()
    rc = main(["pretrain", *TINY_ARGS, *argv])
    return rc, capsys.readouterr().err


def _one_paragraph(err: str) -> str:
    assert err.startswith("detcon pretrain: error: ") and err.count("\n") == 1, err
    return err


def test_a_second_pretrain_into_a_directory_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    """Two `pretrain --out D` both exited 0 and D held only the second run."""
    from detcon.runs import point_lock

    run = tmp_path / "run"
    run.mkdir()
    with point_lock(run):  # what a running `detcon pretrain --out run` (or the launcher) holds
        rc, err = _cli(capsys, "--set", "train.max_steps=2", "--out", str(run))
    assert rc == 2
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in _one_paragraph(err)
    assert not (run / "config.json").exists() and not (run / "checkpoint.pt").exists()


def test_the_name_a_dead_holder_left_in_the_lock_file_blocks_nobody(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (run / ".lock").write_text(f"{socket.gethostname()} {dead}\n")  # killed -9 while holding
    rc, err = _cli(capsys, "--set", "train.max_steps=2", "--out", str(run))
    assert rc == 0, err
    assert (run / "train_summary.json").exists()


def test_pretrain_into_an_existing_file_is_one_paragraph(tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("not a run")
    rc, err = _cli(capsys, "--out", str(out))
    assert rc == 2 and f"{str(out)!r} is an existing file" in _one_paragraph(err)
    assert out.read_text() == "not a run"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip", "header"])
def test_a_corrupt_checkpoint_is_named_with_the_fix_and_kept(tmp_path, capsys, damage):
    rc, err = _cli(
        capsys, "--set", "train.max_steps=4", "--stop-after", "2", "--out", str(tmp_path)
    )
    assert rc == 0, err
    ckpt = tmp_path / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    if damage == "header":  # the last record's "version needed" in the zip's directory
        data[data.rfind(b"PK\x01\x02") + 6] ^= 0xFF
    else:
        data[len(data) // 2] ^= 0xFF  # one byte of a tensor's data: torch.load alone reads it
    ckpt.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\x00" * 64, "empty": b""}.get(
            damage, data
        )
    )
    damaged = ckpt.read_bytes()
    rc, err = _cli(capsys, "--set", "train.max_steps=4", "--out", str(tmp_path))
    assert rc == 2
    assert f"{ckpt} is truncated or corrupt" in _one_paragraph(err) and f"mv {ckpt}" in err
    assert {"empty": "(an empty file)", "flip": "(Bad CRC-32 for file"}.get(
        damage, "corrupt ("
    ) in _one_paragraph(err)
    assert ckpt.read_bytes() == damaged


def test_resuming_with_another_config_names_the_differing_fields(tmp_path, capsys):
    rc, err = _cli(
        capsys, "--set", "train.max_steps=4", "--stop-after", "2", "--out", str(tmp_path)
    )
    good = (tmp_path / "checkpoint.pt").read_bytes()
    rc, err = _cli(
        capsys,
        "--set",
        "train.max_steps=4",
        "--set",
        "seed=1",
        "--set",
        "optim.base_lr=0.5",
        "--out",
        str(tmp_path),
    )
    assert rc == 2
    _one_paragraph(err)
    assert "optim.base_lr: 0.032 -> 0.5" in err  # the cpu profile's base lr
    assert "seed: 0 -> 1" in err
    assert (tmp_path / "checkpoint.pt").read_bytes() == good


def test_a_non_finite_loss_is_one_paragraph_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    rc, err = _cli(
        capsys, "--set", "train.max_steps=6", "--stop-after", "2", "--out", str(tmp_path)
    )
    good = (tmp_path / "checkpoint.pt").read_bytes()
    from detcon import models

    real = models.PretrainModel.forward
    monkeypatch.setattr(
        models.PretrainModel,
        "forward",
        lambda self, *a, **kw: {**real(self, *a, **kw), "loss": torch.tensor(float("inf"))},
    )
    rc, err = _cli(capsys, "--set", "train.max_steps=6", "--out", str(tmp_path))
    assert rc == 2 and "loss is inf at step 2" in _one_paragraph(err)
    assert str(tmp_path / "checkpoint.pt") in err
    assert (tmp_path / "checkpoint.pt").read_bytes() == good


def test_a_full_disk_names_the_file_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    import errno

    rc, err = _cli(
        capsys, "--set", "train.max_steps=4", "--stop-after", "2", "--out", str(tmp_path)
    )
    good = (tmp_path / "checkpoint.pt").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    rc, err = _cli(capsys, "--set", "train.max_steps=4", "--out", str(tmp_path))
    assert rc == 2
    assert (
        f"no space left on the disk while writing {tmp_path / 'checkpoint.pt'}"
        in _one_paragraph(err)
    )
    assert "free there" in err
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert not list(tmp_path.glob(".*.tmp"))


def test_rerunning_a_finished_run_keeps_its_summary(tmp_path, capsys):
    """The fix named for a damaged backbone.pt (pretrain again with the run's config.json) must
    export it again without replacing train_summary.json by one of a run of no steps."""
    rc, err = _cli(capsys, "--set", "train.max_steps=2", "--out", str(tmp_path))
    summary = (tmp_path / "train_summary.json").read_text()
    backbone = (tmp_path / "backbone.pt").read_bytes()
    (tmp_path / "backbone.pt").write_bytes(backbone[:100])
    from detcon.cli import main

    assert (
        main(
            [
                "pretrain",
                "--quiet",
                "--config",
                str(tmp_path / "config.json"),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert (tmp_path / "backbone.pt").read_bytes() == backbone
    assert (tmp_path / "train_summary.json").read_text() == summary
    assert json.loads((tmp_path / "backbone.json").read_text()) == {"step": 2, "planned_steps": 2}


def test_a_killed_writer_leaves_no_lock_behind_in_its_forked_workers(tmp_path):
    """A forked child (a DataLoader worker) must not keep its killed parent's run-directory lock:
    the resumed run found the directory 'in use' until the orphaned worker exited (seen in CI)."""
    from detcon.runs import point_lock

    script = f"""
import os, time
from detcon.runs import point_lock
with point_lock({str(tmp_path)!r}):
    child = os.fork()
    if child == 0:  # a worker that outlives its parent for a while
        time.sleep(30)
        os._exit(0)
    open({str(tmp_path / "ready")!r}, "w").write(str(child))
    time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    ready = tmp_path / "ready"
    while not (ready.exists() and ready.read_text()) and time.time() < deadline:
        time.sleep(0.05)  # the file exists before its text is written
    child = int(ready.read_text())
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with point_lock(tmp_path):  # the worker is still alive: it must not hold the lock
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_resumed_pretrain_says_which_steps_it_ran(tmp_path, capsys):
    from detcon.cli import main

    run = str(tmp_path / "run")
    assert main(["pretrain", *TINY_ARGS, "--out", run, "--stop-after", "2"]) == 0
    assert " for 2 steps in " in capsys.readouterr().out
    assert main(["pretrain", *TINY_ARGS, "--out", run]) == 0
    assert " for steps 3-8 (resumed; 6 in this run), 8 in " in capsys.readouterr().out
    assert main(["pretrain", *TINY_ARGS, "--out", run]) == 0  # "steps 9-8" before
    assert " for 8 steps (already done: nothing trained in this run) in " in capsys.readouterr().out


def test_a_reader_that_goes_away_is_not_an_error():
    """`detcon config | head -1`: the pipe closes early; no traceback. The first line comes from
    another writer, so head has exited before detcon (a second of imports later) writes: its
    output is too small to fill the pipe while head still reads."""
    proc = subprocess.run(
        f"{{ echo first; {sys.executable} -m detcon config --explain; }} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_a_negative_stop_after_is_refused_before_anything_is_written(tmp_path, capsys):
    # --stop-after -3 "pretrained for -3 steps", recorded step -3 in backbone.json and left a
    # directory no later resume could use.
    from detcon.cli import main

    with pytest.raises(SystemExit):
        main(["pretrain", *TINY_ARGS, "--out", str(tmp_path / "cli"), "--stop-after", "-3"])
    assert "'-3': expected a step count" in capsys.readouterr().err
    with pytest.raises(ValueError, match="stop_after=-3"):
        pretrain(tiny_cfg(train={"max_steps": 2, "threads": 1}), tmp_path / "lib", stop_after=-3)
    assert not (tmp_path / "cli").exists() and not (tmp_path / "lib").exists()


def test_auto_device_without_cuda_warns_for_a_paper_scale_backbone(monkeypatch):
    """A CPU-only torch on a GPU node would otherwise train a ResNet-50 on the CPU silently."""
    import warnings

    from detcon.train import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match=r"found no CUDA device: training the resnet50 on the CPU"):
        assert _device(load_pretrain_config({}, profile="paper")) == torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cpu profile's small network: no warning
        assert _device(load_pretrain_config({}, profile="cpu")) == torch.device("cpu")
    cuda = load_pretrain_config({"train": {"device": "cuda"}}, profile="paper")
    with pytest.raises(ValueError, match="no CUDA device is available here"):
        _device(cuda)


def test_a_multi_task_allocation_outside_a_submitit_job_trains_alone(monkeypatch):
    """`make test` or `detcon pretrain` in the shell of `salloc -n 2`: submitit's environment
    raised "Could not figure out which environment the job is runnning in"."""
    from detcon.train import init_distributed

    monkeypatch.setenv("SLURM_NTASKS", "2")
    with pytest.warns(RuntimeWarning, match="SLURM_NTASKS=2 but this is not a task of a submitit"):
        assert init_distributed() == (0, 1)


@pytest.mark.parametrize("device, backend", [("cpu", "gloo"), ("auto", "nccl")])
def test_the_process_group_backend_follows_the_runs_device(monkeypatch, device, backend):
    # NCCL was chosen wherever CUDA was present: a train.device=cpu run of two processes on a GPU
    # node ran its collectives on CPU tensors through NCCL, which refuses them
    from detcon.train import init_distributed

    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(
        torch.distributed, "init_process_group", lambda backend, **kw: chosen.append(backend)
    )
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    assert init_distributed(device) == (0, 2) and chosen == [backend]


def test_a_run_refused_before_training_leaves_no_directory_behind(tmp_path, capsys):
    # a batch larger than the dataset: the directory made for the lock stayed, holding a .lock
    from detcon.cli import main

    run = tmp_path / "run"
    argv = ["pretrain", *TINY_ARGS, "--out", str(run), "--set", "optim.batch_size=64"]
    assert main(argv) == 2
    assert "larger than the dataset" in capsys.readouterr().err
    assert not run.exists()
    run.mkdir()  # a directory the user made is kept
    assert main(argv) == 2 and run.is_dir()


def test_a_pretrain_refused_the_lock_leaves_the_holders_directory(tmp_path, monkeypatch):
    """Two `detcon pretrain --out X` starting together: the one refused the lock removed the
    holder's .lock and directory (the holder then trained unlocked)."""
    import contextlib

    import detcon.train
    from detcon.runs import PointBusyError

    run = tmp_path / "run"

    @contextlib.contextmanager
    def taken(out):  # another process made the directory and holds its lock meanwhile
        (out / ".lock").write_text("otherhost 1\n")
        raise PointBusyError(f"{out} is in use by another process")
        yield

    monkeypatch.setattr(detcon.train, "point_lock", taken)
    cfg = tiny_cfg(train={"max_steps": 2, "threads": 1})
    with pytest.raises(PointBusyError):
        pretrain(cfg, run, progress=False, lock=True)
    assert (run / ".lock").read_text() == "otherhost 1\n"


def test_a_warmup_spanning_the_whole_run_is_said_once_at_its_start(tmp_path, recwarn):
    # epochs=2 at the cpu profile (its warmup: 2 epochs) never leaves the warmup; it trained
    # without a word. Said when the run starts, not on every resume.
    import warnings

    cfg = tiny_cfg(train={"max_steps": 2, "threads": 1, "checkpoint_every": 1})
    with pytest.warns(UserWarning, match=r"warmup_epochs=2 spans the whole run .*8 steps"):
        pretrain(cfg, tmp_path / "run", stop_after=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pretrain(cfg, tmp_path / "run")  # the resume: silent
    quiet = tiny_cfg(optim={"batch_size": 4, "epochs": 2, "warmup_epochs": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pretrain(dataclasses.replace(quiet, train=cfg.train), tmp_path / "quiet")
