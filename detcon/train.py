"""The one pretraining loop (all methods), with atomic checkpoints, exact resume and DDP.

Run directory contents written here: ``config.json``, ``metrics.jsonl`` (one JSON line per logged
step), ``checkpoint.pt`` (atomic), ``backbone.pt`` (exported encoder), ``backbone.json`` (the
step it is from) and ``train_summary.json`` (docs/run-directory.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from detcon.atomic import (
    load_torch,
    naming_full_disk,
    remove_stale_temp_files,
    save_torch,
    write_json,
    write_text,
)
from detcon.config import (
    ConfigError,
    PretrainConfig,
    config_differences,
    from_dict,
    scaled_lr,
    to_dict,
    total_steps,
    warmup_steps,
)
from detcon.data.pretrain import (
    StepBatchSampler,
    build_pretrain_dataset,
    collate_views,
    derive_seed,
)
from detcon.models import (
    PretrainModel,
    convert_sync_batchnorm,
    export_backbone,
    first_non_finite,
)
from detcon.optim import LARS, learning_rate, param_groups, target_ema
from detcon.progress import ProgressLines
from detcon.runs import LOCK, point_lock

__all__ = [
    "NonFiniteLossError",
    "SpeedOptions",
    "StepContext",
    "StepResult",
    "TrainResult",
    "build_loader",
    "build_model",
    "build_optimizer",
    "init_distributed",
    "load_checkpoint",
    "pretrain",
    "retain_freed_host_memory",
    "train_step",
]

CHECKPOINT = "checkpoint.pt"
# The files pretrain writes atomically (metrics.jsonl only when a resume trims it): on start it
# removes the temp files a killed write of them left (and only theirs: another program may be
# writing its own file of the run directory).
_WRITTEN = (
    CHECKPOINT,
    "backbone.pt",
    "backbone.json",
    "config.json",
    "train_summary.json",
    "metrics.jsonl",
)
CHECKPOINT_FORMAT = 1
# train_summary.json's final_loss: the mean loss of the last steps.
FINAL_LOSS_STEPS = 10


class NonFiniteLossError(FloatingPointError):
    """The loss, or the model's state, became NaN or infinite; the last good checkpoint is kept
    untouched. (A FloatingPointError: the CLI reports it as a one-paragraph error, the fix being a
    setting.)"""


@dataclass(frozen=True)
class TrainResult:
    """What a pretraining run did, over every process that trained it (resumptions included):
    ``final_loss`` the mean of the last ``FINAL_LOSS_STEPS`` losses, ``wall_s`` the training wall
    time summed over the processes, ``resumed_from`` the step this process started at."""

    steps: int
    final_loss: float
    wall_s: float
    images_per_s: float
    resumed_from: int


# --------------------------------------------------------------------------- distributed


def init_distributed(device: str = "auto") -> tuple[int, int]:
    """Join the process group described by the environment (torchrun or a submitit multi-task
    SLURM job); returns (rank, world_size), (0, 1) when running alone. ``device``: the run's
    ``train.device``; NCCL only where it trains on GPUs (``cpu`` on a GPU node: gloo)."""
    dist = torch.distributed
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    tasks = os.environ.get("SLURM_NTASKS", "1")
    if "RANK" not in os.environ and tasks.isdigit() and int(tasks) > 1:
        if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":  # one task of a submitit job
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        else:  # e.g. a shell of `salloc -n 2`: one process, whatever the allocation holds
            warnings.warn(
                f"SLURM_NTASKS={tasks} but this is not a task of a submitit job and RANK is not "
                "set: training in this process alone (`detcon run --executor slurm` or torchrun "
                "train on several)",
                RuntimeWarning,
                stacklevel=2,
            )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        # One GPU per process: without this every rank of a node would run on cuda:0 (NCCL
        # refuses two ranks on one GPU). torchrun and submitit export LOCAL_RANK; a task that
        # sees a single GPU (SLURM binding one per task) gets index 0.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    backend = "nccl" if on_gpu else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return dist.get_rank(), dist.get_world_size()


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Mean of the gradients over processes (one flat all-reduce)."""
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


# --------------------------------------------------------------------------- host memory

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def retain_freed_host_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the process: no mmap below 32 MiB, no trimming
    of the heap top below 256 MiB. Returns False where glibc is not the allocator.

    A training step allocates and frees the same large host buffers every time (activations of
    the no-grad target network, the loss's logits). With glibc's defaults part of them goes back
    to the OS and returns as fresh zero-filled pages: ~3,000 page faults per DetCon-B step at
    the cpu profile, a few percent of the step (measured, benchmarks/bench_step.py). Process-wide
    and result-neutral; the resident size stays at its peak instead of shrinking between steps.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, 256 << 20))


# --------------------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``).

    Raises:
        ValueError: the file is truncated, corrupt or not a detcon checkpoint; the message
            names it and how to start over (it is never deleted here).
    """
    path = Path(path)
    fix = (
        f"the run cannot resume from it: move it away (`mv {path} {path}.bad`), with the run's "
        "backbone and evaluation files if it has any, to train the run from step 0, or put back "
        "a good copy"
    )
    try:
        ckpt = load_torch(path)
    except ValueError as exc:
        raise ValueError(f"{path} is truncated or corrupt ({exc}); {fix}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a detcon checkpoint of format {CHECKPOINT_FORMAT}; {fix}")
    return ckpt


# What a trained encoder leaves beside its checkpoint: its weights, their record, the summary and
# the evaluations of those weights.
_ENCODER_OUTPUTS = ("backbone.pt", "backbone.json", "train_summary.json", "eval*.json")


def _refuse_previous_outputs(out: Path) -> None:
    """A start from step 0 (no checkpoint) must not train beside an earlier encoder's outputs:
    until it finished they would pass for its own, and its evaluation could keep their entries.

    Raises:
        FileExistsError: naming the files and how to keep them.
    """
    found = sorted({p.name for pattern in _ENCODER_OUTPUTS for p in out.glob(pattern)})
    if found:
        raise FileExistsError(
            f"run directory {out} has no {CHECKPOINT} to resume from but holds an earlier "
            f"encoder's outputs ({', '.join(found)}): training from step 0 beside them would "
            f"pass them off as the new run's; keep them elsewhere (`mkdir {out}/previous && "
            f"cd {out} && mv {' '.join(found)} previous/`), or train into a new run directory"
        )


def _truncate_metrics(path: Path, before_step: int) -> None:
    """Keep only metric lines of steps already covered by the checkpoint we resume from."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line from a kill
        # a line that is not a step's record (edited by hand, another writer's) is dropped
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and not isinstance(step, bool) and step < before_step:
            keep.append(line)
    write_text(path, "".join(k + "\n" for k in keep))


# --------------------------------------------------------------------------- the loop


def _device(cfg: PretrainConfig) -> torch.device:
    if cfg.train.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if cfg.model.backbone != "small":  # e.g. a CPU-only torch build on a GPU node
            warnings.warn(
                f"train.device='auto' found no CUDA device: training the {cfg.model.backbone} "
                "on the CPU (set train.device=cuda to make this an error)",
                stacklevel=2,
            )
        return torch.device("cpu")
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "train.device='cuda' but no CUDA device is available here; use 'cpu' or 'auto'"
        )
    return torch.device(cfg.train.device)


def _to_input(
    views: torch.Tensor,
    view: int,
    cfg: PretrainConfig,
    gen: torch.Generator,
    device: torch.device,
    channels_last: bool,
) -> torch.Tensor:
    """uint8 views -> photometrically augmented, normalised float batch on ``device``."""
    from detcon.augment import normalize, photometric

    x = views.to(device, non_blocking=True).float().div_(255.0)
    x = normalize(photometric(x, view=view, cfg=cfg.augment, generator=gen))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@dataclass(frozen=True)
class SpeedOptions:
    """Speed switches that leave the results unchanged and are not (yet) config fields.

    Attributes:
        foreach: LARS and the target EMA update use multi-tensor (``torch._foreach_*``) kernels:
            a few launches per step instead of several per parameter (GPU launch overhead).
        compile: ``torch.compile`` the backbones (``nn.Module.compile``, so state-dict keys and
            checkpoints are unchanged); heads, mask handling and loss stay eager
            (:meth:`detcon.models.PretrainModel.compile_networks`).
        channels_last: channels_last memory format for the model and the inputs even where
            ``cfg.train.channels_last`` is off.
        dedup_heads: the heads' matrix products run once per distinct sampled mask
            (:class:`detcon.models.RepeatedRows`); off only to measure what that saves.
        retain_host_memory: :func:`retain_freed_host_memory` (process-wide malloc settings)
            when training starts; off to leave the process's allocator alone.
    """

    foreach: bool = False
    compile: bool = False
    channels_last: bool = False
    dedup_heads: bool = True
    retain_host_memory: bool = True


@dataclass(frozen=True)
class StepContext:
    """Everything one training step needs besides the model, optimiser and batch; fixed per run.

    Attributes:
        cfg: the run's config.
        device: where the model lives.
        rank, world: this process and the number of processes.
        peak_lr, total_steps, warmup_steps: the learning-rate and EMA schedules.
        speed: the speed switches (:class:`SpeedOptions`).
    """

    cfg: PretrainConfig
    device: torch.device
    peak_lr: float
    total_steps: int
    warmup_steps: int
    rank: int = 0
    world: int = 1
    speed: SpeedOptions = SpeedOptions()

    @classmethod
    def for_run(
        cls,
        cfg: PretrainConfig,
        device: torch.device,
        num_images: int,
        rank: int = 0,
        world: int = 1,
        speed: SpeedOptions | None = None,
    ) -> StepContext:
        """The context of a run of ``cfg`` over a dataset of ``num_images`` images."""
        return cls(
            cfg=cfg,
            device=device,
            rank=rank,
            world=world,
            peak_lr=scaled_lr(cfg.optim),
            total_steps=total_steps(cfg.optim, num_images),
            warmup_steps=warmup_steps(cfg.optim, num_images),
            speed=speed or SpeedOptions(),
        )


@dataclass(frozen=True)
class StepResult:
    """What one step reports: the loss (averaged over processes), lr, EMA tau, model outputs."""

    loss: float
    lr: float
    tau: float
    outputs: dict[str, torch.Tensor]


def _channels_last(cfg: PretrainConfig, speed: SpeedOptions) -> bool:
    return cfg.train.channels_last or speed.channels_last


def build_model(
    cfg: PretrainConfig, device: torch.device, world: int = 1, speed: SpeedOptions | None = None
) -> PretrainModel:
    """The pretraining model of ``cfg`` in train mode on ``device``, initialised from the run's
    seed (the same weights on every rank), with cross-process BatchNorm when ``world > 1``."""
    speed = speed or SpeedOptions()
    torch.manual_seed(derive_seed(cfg.seed, "init"))  # the same initial weights on every rank
    model = PretrainModel(cfg)
    model.dedup_heads = speed.dedup_heads
    model.to(device)
    if world > 1:
        # After .to(device): on CUDA this picks torch's SyncBatchNorm (every BN, heads included).
        model = convert_sync_batchnorm(model)
    if _channels_last(cfg, speed):
        model.to(memory_format=torch.channels_last)
    model.train()
    if speed.compile:
        model.compile_networks()
    return model


def build_optimizer(
    cfg: PretrainConfig, model: PretrainModel, speed: SpeedOptions | None = None
) -> torch.optim.Optimizer:
    """LARS (or AdamW, ``optim.optimizer``) over the online modules, at the peak lr; biases and
    norm parameters get no weight decay (and no trust ratio)."""
    if cfg.optim.optimizer == "adamw":
        return torch.optim.AdamW(
            param_groups(model.online_modules(), cfg.optim.weight_decay),
            lr=scaled_lr(cfg.optim),
            foreach=(speed or SpeedOptions()).foreach,
        )
    return LARS(
        param_groups(model.online_modules(), cfg.optim.weight_decay),
        lr=scaled_lr(cfg.optim),
        momentum=cfg.optim.momentum,
        trust_coefficient=cfg.optim.trust_coefficient,
        foreach=(speed or SpeedOptions()).foreach,
    )


def build_loader(
    cfg: PretrainConfig,
    dataset: torch.utils.data.Dataset,
    start: int,
    end: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """This rank's batches of steps ``start..end-1`` (``cfg.data.num_workers`` workers; pinned
    memory when training on CUDA)."""
    sampler = StepBatchSampler(
        len(dataset), cfg.optim.batch_size, cfg.seed, start, end, rank, world
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_views,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        # the workers' base seed (unused: every draw has its own seed) from a generator of its
        # own, not the global one, whose state the checkpoint saves: a resumed run saves the
        # uninterrupted run's state, as it would without the loader
        generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "loader", start, rank)),
    )


def _worker_message(exc: BaseException) -> str | None:
    """The error message of a DataLoader worker process, which torch re-raises in the training
    process with the worker's whole traceback as the message ("Caught ValueError in DataLoader
    worker process 0. Original Traceback ..."); None for other errors."""
    text = str(exc.args[0]) if exc.args else ""
    lines = text.rstrip().splitlines()
    if not lines or not (lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]):
        return None
    last_frame = max(i for i, line in enumerate(lines) if i == 0 or line[:1].isspace())
    error = " ".join(lines[last_frame + 1 :]) or lines[-1]  # "ValueError: <message>"
    return error.split(": ", 1)[1] if ": " in error else error


def _batches(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches; an error of a worker process is raised again with the worker's
    own message (e.g. which mask-store shard failed to load and how to repair it), not its
    traceback, which stays chained."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:
            message = _worker_message(exc)
            if message is None:
                raise
            try:
                error = type(exc)(message)
            except Exception:  # noqa: BLE001 - a type that needs other arguments: keep torch's
                raise exc from None
            raise error from exc
        yield batch


def train_step(
    model: PretrainModel,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    step: int,
    ctx: StepContext,
) -> StepResult:
    """One optimisation step of the one training loop, on this rank's share of the batch.

    Sets the scheduled lr, draws the step's randomness (a function of ``(seed, step)`` only,
    sliced for this rank), augments both views photometrically on the device, runs the model
    under the configured precision, checks the loss is finite (averaged over processes), then
    backward, gradient average, LARS step and the target EMA update.

    Raises:
        NonFiniteLossError: the loss is NaN or infinite; no optimiser step was taken (the
            forward pass has moved the BatchNorm running statistics already).
    """
    cfg, device, rank, world = ctx.cfg, ctx.device, ctx.rank, ctx.world
    local_batch = cfg.optim.batch_size // world
    k = cfg.masks.num_samples
    lr = learning_rate(
        step, scaled_lr=ctx.peak_lr, total_steps=ctx.total_steps, warmup_steps=ctx.warmup_steps
    )
    for group in optimizer.param_groups:
        group["lr"] = lr
    # Randomness of this step: a function of (seed, step) only, sliced for this rank.
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "masks", step))
    uniforms = torch.rand(2, cfg.optim.batch_size, k, generator=g)
    uniforms = uniforms[:, rank * local_batch : (rank + 1) * local_batch].to(device)
    gen = torch.Generator(device=device).manual_seed(
        derive_seed(cfg.seed, "photometric", step, rank)
    )
    cl = _channels_last(cfg, ctx.speed)
    images = [
        _to_input(batch["view1"], 0, cfg, gen, device, cl),
        _to_input(batch["view2"], 1, cfg, gen, device, cl),
    ]
    masks = [
        batch["masks1"].to(device, non_blocking=True),
        batch["masks2"].to(device, non_blocking=True),
    ]
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16"
    )
    with autocast:
        outputs = model(images, masks, [uniforms[0], uniforms[1]])
    loss = outputs["loss"].float()
    check = loss.detach().clone()
    if world > 1:
        torch.distributed.all_reduce(check)
        check /= world
    last_loss = check.item()
    if not math.isfinite(last_loss):
        raise NonFiniteLossError(f"loss is {last_loss} at step {step}; stopped")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _average_gradients([p for m in model.online_modules() for p in m.parameters()], world)
    optimizer.step()
    tau = target_ema(step, base_ema=cfg.optim.base_ema, total_steps=ctx.total_steps)
    model.update_target(tau, foreach=ctx.speed.foreach)
    return StepResult(loss=last_loss, lr=lr, tau=tau, outputs=outputs)


def pretrain(
    cfg: PretrainConfig,
    out_dir: str | Path,
    *,
    progress: bool | None = None,
    stop_after: int | None = None,
    speed: SpeedOptions | None = None,
    lock: bool = False,
) -> TrainResult:
    """Pretrain ``cfg`` into ``out_dir``, resuming from its checkpoint when there is one.

    Args:
        cfg: the frozen config.
        out_dir: run directory (created).
        progress: tqdm bar; None shows it on an interactive terminal and otherwise writes a
            plain line a minute to stderr (:class:`detcon.progress.ProgressLines`).
        stop_after: stop (with a checkpoint) after this many steps in total; used to simulate an
            interruption. The schedule still spans the whole run.
        speed: speed switches that leave the results unchanged (benchmarks; not config fields).
        lock: hold ``out_dir/.lock`` (:func:`detcon.runs.point_lock`, rank 0) while training:
            one writer per run directory. ``detcon pretrain`` sets it; the launcher holds the
            lock itself while its notebook calls this.

    Raises:
        NotADirectoryError: ``out_dir`` is an existing file.
        PointBusyError: with ``lock``, another process holds the lock (the message names it).
        ValueError: the checkpoint is damaged or was written for another config (naming the
            fields that differ).
        NonFiniteLossError: the loss became NaN or infinite (the last checkpoint is kept).
        DiskFullError: no space left while writing a file (naming it; its last version kept).
    """
    out = Path(out_dir)
    if stop_after is not None and (isinstance(stop_after, bool) or stop_after < 0):
        raise ValueError(f"stop_after={stop_after!r}: expected a step count, 0 or more")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"run directory {str(out)!r} is an existing file: expected a directory (or a path "
            "that does not exist yet); choose another --out"
        )
    rank, _ = init_distributed(cfg.train.device)
    held = lock and rank == 0
    created = held and not out.exists()
    if held:
        out.mkdir(parents=True, exist_ok=True)
    with point_lock(out) if held else contextlib.nullcontext():
        try:
            return _pretrain(cfg, out, progress=progress, stop_after=stop_after, speed=speed)
        except BaseException:
            # refused before writing anything (a batch larger than the dataset, a missing data
            # folder): the directory this call made for its lock goes too, while the lock is
            # still held (a process refused the lock never gets here)
            if created:
                with contextlib.suppress(OSError):
                    if {p.name for p in out.iterdir()} <= {LOCK}:
                        (out / LOCK).unlink(missing_ok=True)
                        out.rmdir()
            raise


def _pretrain(
    cfg: PretrainConfig,
    out_dir: str | Path,
    *,
    progress: bool | None = None,
    stop_after: int | None = None,
    speed: SpeedOptions | None = None,
) -> TrainResult:
    """The body of :func:`pretrain`, with the run directory held when it is locked."""
    out = Path(out_dir)
    rank, world = init_distributed(cfg.train.device)
    if cfg.optim.batch_size % world:
        raise ValueError(
            f"optim.batch_size={cfg.optim.batch_size} is not divisible by the {world} processes"
        )
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if (speed or SpeedOptions()).retain_host_memory:
        retain_freed_host_memory()
    device = _device(cfg)
    dataset = build_pretrain_dataset(cfg)
    n_total = total_steps(cfg.optim, len(dataset))
    planned_end = n_total if not cfg.train.max_steps else min(n_total, cfg.train.max_steps)
    end = planned_end if stop_after is None else min(planned_end, stop_after)

    ctx = StepContext.for_run(cfg, device, len(dataset), rank, world, speed)
    model = build_model(cfg, device, world, speed)
    optimizer = build_optimizer(cfg, model, speed)

    ckpt_path = out / CHECKPOINT
    # The summary covers every trained step, across resumptions: the checkpoint carries the wall
    # time so far and the last losses (checkpoints written before they did: this process's only).
    start, prior_wall, timed_from, losses = 0, 0.0, 0, []
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        try:
            stored = from_dict(PretrainConfig, ckpt["config"])
        except ConfigError as exc:  # e.g. a field renamed by a code update since it was written
            raise ValueError(
                f"{ckpt_path} holds a config this code does not read ({exc}): it was written by "
                "another version of detcon; resume with that version, or train into a new run "
                "directory"
            ) from None
        if to_dict(stored) != to_dict(cfg):
            raise ValueError(
                f"{ckpt_path} was written for a different config (checkpoint -> now: "
                + "; ".join(config_differences(stored, cfg))
                + "); resume with the run's own config (its config.json: --config "
                f"{out / 'config.json'}), or train this one into a new run directory"
            )
        if ckpt.get("num_images", len(dataset)) != len(dataset):  # not in the config: a folder
            raise ValueError(
                f"{ckpt_path} was written while the dataset held {ckpt['num_images']} images; it "
                f"holds {len(dataset)} now ({cfg.data.dataset} at {cfg.data.root or 'its default'}"
                "), which changes the schedule's length: restore the dataset to resume, or "
                "train into a new run directory"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        start = int(ckpt["step"])
        prior_wall = float(ckpt.get("wall_s", 0.0))
        timed_from = 0 if "wall_s" in ckpt else start
        losses = [float(x) for x in ckpt.get("loss_tail", [])]
        # A stop before the checkpoint's step trains nothing: the checkpoint keeps its step (it
        # was rewritten as that earlier step beside the later weights).
        end = max(end, start)
    else:
        _refuse_previous_outputs(out)
    if start == 0 and rank == 0 and ctx.warmup_steps >= ctx.total_steps > 1:  # once, at the start
        warnings.warn(
            f"optim.warmup_epochs={cfg.optim.warmup_epochs:g} spans the whole run "
            f"(optim.epochs={cfg.optim.epochs:g}, {ctx.total_steps} steps): the learning rate "
            "only rises, it never reaches its cosine decay",
            stacklevel=3,
        )
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out, _WRITTEN)
        write_json(out / "config.json", to_dict(cfg))
        _truncate_metrics(out / "metrics.jsonl", start)

    def save(step: int) -> None:
        nonlocal saved_step
        # every rank checks (their states are equal): the loss of a step is checked before its
        # update, so an update (or the BatchNorm statistics of its forward pass) can still make
        # the state non-finite, and such a state must never replace a good checkpoint or pass
        # for a finished run
        bad = first_non_finite({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
        if bad is not None:
            raise NonFiniteLossError(
                f"the model's state is not finite after step {step - 1} ({bad}); stopped. "
                f"{kept()}; train with a lower optim.base_lr (or LARS's "
                "optim.trust_coefficient) into a new run directory"
            )
        if rank == 0:
            save_torch(
                ckpt_path,
                {
                    "format": CHECKPOINT_FORMAT,
                    "step": step,
                    "config": to_dict(cfg),
                    "num_images": len(dataset),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "wall_s": prior_wall + time.perf_counter() - t_run,
                    "loss_tail": losses[-FINAL_LOSS_STEPS:],
                },
            )
        saved_step = step

    def kept() -> str:
        if saved_step is None:
            return f"No checkpoint was saved: a rerun into {out} trains from step 0"
        return (
            f"The last good checkpoint ({ckpt_path}, step {saved_step}) is kept (it resumes "
            "this config only)"
        )

    saved_step = start if ckpt_path.exists() else None
    loader = build_loader(cfg, dataset, start, end, device, rank, world)
    interactive = sys.stderr.isatty()
    show = interactive if progress is None else progress
    # Not a terminal (a SLURM .out, nohup): a plain line a minute instead of a bar.
    lines = None
    if progress is None and not interactive and rank == 0:
        lines = ProgressLines("pretrain", end, "steps", initial=start)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=end,
        initial=start,
        disable=not (show and rank == 0),
        desc="pretrain",
        unit="step",
        dynamic_ncols=True,
    )
    metrics_file = (out / "metrics.jsonl").open("a") if rank == 0 else None
    t_run, last_loss = time.perf_counter(), math.nan
    try:
        for step, batch in enumerate(_batches(loader), start=start):  # noqa: B007
            t0 = time.perf_counter()
            try:
                res = train_step(model, optimizer, batch, step, ctx)
            except NonFiniteLossError as exc:
                raise NonFiniteLossError(
                    f"{exc}. {kept()}; check the inputs, or train with a lower optim.base_lr "
                    "into a new run directory"
                ) from None
            lr, tau, outputs, last_loss = res.lr, res.tau, res.outputs, res.loss
            losses.append(last_loss)
            dt = time.perf_counter() - t0
            if metrics_file is not None and step % cfg.train.log_every == 0:
                row = {
                    "step": step,
                    "epoch": step * cfg.optim.batch_size / len(dataset),
                    "loss": last_loss,
                    "lr": lr,
                    "tau": tau,
                    "normalized_proj_std": float(outputs["normalized_proj_std"]),
                    "masks_present": float(outputs["masks_present"]),
                    "images_per_s": cfg.optim.batch_size / dt,
                }
                with naming_full_disk(out / "metrics.jsonl"):
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.3g}")
            bar.update(1)
            if lines is not None:
                lines.update(step + 1, f"loss {last_loss:.4f}, lr {lr:.3g}")
            if (step + 1) % cfg.train.checkpoint_every == 0 and step + 1 < end:
                save(step + 1)
        done = end
        save(done)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM (detcon.cli.Terminated): say what is left
        again = "" if saved_step is None else "; the same command resumes it"
        raise type(exc)(f"{kept()}{again}") from None
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    wall = prior_wall + time.perf_counter() - t_run
    tail = losses[-FINAL_LOSS_STEPS:]
    result = TrainResult(
        steps=done,
        final_loss=float(sum(tail) / len(tail)) if tail else math.nan,
        wall_s=wall,
        images_per_s=(done - timed_from) * cfg.optim.batch_size / wall if wall else 0.0,
        resumed_from=start,
    )
    if rank == 0:
        # backbone.json: the step backbone.pt is from (`detcon evaluate` records it, and warns
        # when the run is unfinished). Removed first: a kill between the two writes must not
        # leave an older step beside newer weights.
        (out / "backbone.json").unlink(missing_ok=True)
        save_torch(out / "backbone.pt", export_backbone(model))
        write_json(out / "backbone.json", {"step": done, "planned_steps": planned_end})
        # A rerun of a finished run trains no step: it exports backbone.pt again (the fix for a
        # damaged one) and keeps the summary of the steps that were trained (or writes it from
        # the checkpoint, after a kill between the last checkpoint and the summary).
        if done == planned_end and (done > start or not (out / "train_summary.json").exists()):
            write_json(
                out / "train_summary.json",
                {
                    "steps": done,
                    "final_loss": result.final_loss,
                    "wall_s": wall,
                    "images_per_s": result.images_per_s,
                    "resumed_from": start,
                    "method": cfg.method,
                    "mask_source": cfg.masks.source,
                },
            )
    return result
