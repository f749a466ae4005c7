"""Write the JAX-free test fixture of ``detcon.official`` (the official-checkpoint importer).

Run by hand, *not* in CI, in a throwaway environment with JAX and Haiku::

    python3 -m venv /tmp/jaxenv
    /tmp/jaxenv/bin/pip install jax jaxlib dm-haiku numpy
    /tmp/jaxenv/bin/python scripts/make_official_fixture.py --out tests/fixtures/official

(The committed fixture was written with jax/jaxlib 0.10.2, dm-haiku 0.0.17, numpy 2.4.6 on CPU.)

It builds two tiny Haiku ResNet v1 trunks named and structured as the official release builds its
encoder (google-deepmind/detcon ``utils/networks.py`` ``ResNetTorso``: ``initial_conv`` 7x7/2 and
``initial_batchnorm``, a 3x3/2 SAME max-pool, four ``hk.nets.ResNet.BlockGroup`` named
``block_group_{g}`` at strides 1, 2, 2, 2 with ``use_projection=True``, every conv SAME-padded;
``detcon_b.py`` puts a ``classifier`` Linear on the mean-pooled features and MLP ``projector`` /
``predictor`` heads beside the encoder). Only the widths are tiny (the release hard-codes a 64-wide
stem; here it is a parameter) so the fixture stays a few tens of kilobytes. The blocks are Haiku's
own ``BlockV1``, so the block naming and stride placement are Haiku's, not ours.

Weights are random and every BatchNorm gets random scale/offset and random moving statistics
(``mean_ema`` / ``var_ema``), so a mapping mistake cannot hide behind an identity BN. Each trunk is
saved as the release saves its checkpoints: ``np.save`` of a pickled dict whose mappings are
Haiku's own mapping class (the pickle then names ``haiku._src.data_structures.FlatMapping``, as
files written by old Haiku versions do):

- ``bottleneck.npy``: ``{"params": ..., "state": ...}`` of ``res_net50`` (bottleneck blocks,
  groups of 1, 2, 1, 1 blocks) with classifier and projector;
- ``basic.npy``: ``{"experiment_state": {"online_params", "online_state", "target_params",
  "target_state"}, "step": ...}`` of ``res_net18_1`` (basic blocks, one per group, so every
  group has a projection shortcut even without a width change) -- the importer must pick the
  online network and ignore the target.

``reference.npz`` (no pickle) holds the inputs (NHWC, int8 codes k of the values k / 32) at
33x33 (odd at every stride-2 layer: stock padding agrees), 32x32 (even at every stride-2 layer)
and 32x40, and Haiku's eval-mode outputs of each trunk (final feature map, NHWC) in float64
(``jax_enable_x64``, weights cast exactly from float32) and float32, plus the classifier logits
of ``bottleneck``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from haiku._src.data_structures import FlatMap  # pickles as FlatMapping, like old checkpoints

jax.config.update("jax_enable_x64", True)

# BatchNorm settings of the release (detcon_b_config.py ``norm_config``), minus cross-replica.
BN_CONFIG = {"decay_rate": 0.9, "eps": 1e-5, "create_scale": True, "create_offset": True}

# name, Haiku encoder name, stem width, (channels per group), (blocks per group), bottleneck
NETWORKS = {
    "bottleneck": ("res_net50", 8, (16, 16, 32, 32), (1, 2, 1, 1), True),
    "basic": ("res_net18_1", 4, (4, 8, 8, 8), (1, 1, 1, 1), False),
}
INPUT_SIZES = ((2, 33, 33), (2, 32, 32), (1, 32, 40))  # (batch, height, width)
NUM_CLASSES = 5
INPUT_SCALE = 32.0


class TinyTorso(hk.Module):
    """The release's ``ResNetTorso`` (v1, ``final_mean_pool=False``) with a configurable stem."""

    def __init__(
        self,
        stem: int,
        channels: tuple[int, ...],
        blocks: tuple[int, ...],
        bottleneck: bool,
        name: str,
    ) -> None:
        super().__init__(name=name)
        self.initial_conv = hk.Conv2D(
            stem, kernel_shape=7, stride=2, with_bias=False, padding="SAME", name="initial_conv"
        )
        self.initial_batchnorm = hk.BatchNorm(name="initial_batchnorm", **BN_CONFIG)
        self.block_groups = [
            hk.nets.ResNet.BlockGroup(
                channels=c,
                num_blocks=n,
                stride=s,
                bn_config=BN_CONFIG,
                resnet_v2=False,
                bottleneck=bottleneck,
                use_projection=True,
                name=f"block_group_{g}",
            )
            for g, (c, n, s) in enumerate(zip(channels, blocks, (1, 2, 2, 2)))
        ]

    def __call__(self, x: jnp.ndarray, is_training: bool) -> jnp.ndarray:
        x = jax.nn.relu(self.initial_batchnorm(self.initial_conv(x), is_training))
        x = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
        for group in self.block_groups:
            x = group(x, is_training, False)
        return x


class TinyMLP(hk.Module):
    """The release's projector ``MLP`` (Linear, BatchNorm, ReLU, Linear) at a tiny size."""

    def __call__(self, x: jnp.ndarray, is_training: bool) -> jnp.ndarray:
        x = hk.Linear(4)(x)
        x = jax.nn.relu(hk.BatchNorm(**BN_CONFIG)(x, is_training))
        return hk.Linear(3, with_bias=False)(x)


def make_forward(spec: tuple) -> Callable[..., dict[str, jnp.ndarray]]:
    enc_name, stem, channels, blocks, bottleneck = spec

    def forward(x: jnp.ndarray, is_training: bool) -> dict[str, jnp.ndarray]:
        feats = TinyTorso(stem, channels, blocks, bottleneck, name=enc_name)(x, is_training)
        pooled = jnp.mean(feats, axis=(1, 2))
        return {
            "features": feats,
            "logits": hk.Linear(NUM_CLASSES, name="classifier")(pooled),
            "projection": TinyMLP(name="projector")(pooled, is_training),
        }

    return forward


def randomise(tree: dict, rng: np.random.Generator) -> dict:
    """Random float32 weights and BN statistics of the same structure (counters kept as ints)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for module, leaves in tree.items():
        out[module] = {}
        for leaf, value in leaves.items():
            shape = np.shape(value)
            if leaf == "w":  # conv HWIO or linear (in, out): He-like scale
                fan_in = int(np.prod(shape[:-1]))
                new = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            elif leaf == "scale":
                new = rng.uniform(0.5, 1.5, shape)
            elif leaf in ("offset", "b"):
                new = rng.normal(0.0, 0.2, shape)
            elif leaf in ("average", "hidden") and module.endswith("mean_ema"):
                new = rng.normal(0.0, 0.3, shape)
            elif leaf in ("average", "hidden") and module.endswith("var_ema"):
                new = rng.uniform(0.5, 2.0, shape)
            elif leaf == "counter":
                out[module][leaf] = np.asarray(int(rng.integers(1, 1000)), np.int32)
                continue
            else:
                raise ValueError(f"unexpected Haiku leaf {module}/{leaf} with shape {shape}")
            out[module][leaf] = new.astype(np.float32)
    return out


def haiku_mapping(tree: dict) -> FlatMap:
    """Wrap a two-level params/state dict in Haiku's mapping class, as old Haiku returned it."""
    return FlatMap({k: FlatMap(v) for k, v in tree.items()})


def cast(tree: Any, dtype: type) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if a.dtype.kind == "f" else a, tree)


def save_atomic(path: Path, write: Callable[[Any], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are committed
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/official"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    # Inputs are k / INPUT_SCALE with int8 k (about N(0, 1)): exact in float32 and float64, and
    # stored as int8 to keep the fixture small.
    codes = {
        f"input_{h}x{w}": np.clip(
            np.round(rng.normal(0.0, INPUT_SCALE, (n, h, w, 3))), -127, 127
        ).astype(np.int8)
        for n, h, w in INPUT_SIZES
    }
    inputs = {k: v.astype(np.float32) / INPUT_SCALE for k, v in codes.items()}
    reference: dict[str, np.ndarray] = {**codes, "input_scale": np.asarray(INPUT_SCALE)}
    for key, spec in NETWORKS.items():
        net = hk.transform_with_state(make_forward(spec))
        params, state = net.init(jax.random.PRNGKey(args.seed), inputs["input_32x32"], True)
        params = randomise(params, rng)
        state = randomise(state, rng)
        for name, x in inputs.items():
            for dtype, tag in ((np.float64, "f64"), (np.float32, "f32")):
                out, _ = net.apply(
                    cast(params, dtype), cast(state, dtype), None, x.astype(dtype), False
                )
                reference[f"{key}/{name}/features_{tag}"] = np.asarray(out["features"])
                if key == "bottleneck":
                    reference[f"{key}/{name}/logits_{tag}"] = np.asarray(out["logits"])
        if key == "bottleneck":
            checkpoint: dict[str, Any] = {
                "params": haiku_mapping(params),
                "state": haiku_mapping(state),
            }
        else:
            # A second, independently drawn network plays the EMA target: same names.
            target_params = randomise(params, rng)
            target_state = randomise(state, rng)
            checkpoint = {
                "experiment_state": {
                    "online_params": haiku_mapping(params),
                    "online_state": haiku_mapping(state),
                    "target_params": haiku_mapping(target_params),
                    "target_state": haiku_mapping(target_state),
                },
                "step": np.int64(1234),
            }
        save_atomic(args.out / f"{key}.npy", lambda f, c=checkpoint: np.save(f, c))
        print(f"{key}: {len(params)} param modules, {len(state)} state modules")
    save_atomic(args.out / "reference.npz", lambda f: np.savez_compressed(f, **reference))
    total = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"wrote {args.out} ({total / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
