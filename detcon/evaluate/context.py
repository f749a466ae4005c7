"""What every task of one evaluation shares: the encoder weights, the data, the frozen features,
the seed and the progress callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from detcon.config import ModelConfig
from detcon.data.pretrain import derive_seed
from detcon.evaluate.backbones import make_backbone
from detcon.evaluate.data import DataStore
from detcon.evaluate.features import FeatureBank

__all__ = ["EvalContext"]


@dataclass
class EvalContext:
    """One evaluation of one encoder.

    ``state`` is the encoder's state dict; :meth:`backbone` builds a fresh copy for each task
    that needs one, so fine-tuning in one task never leaks into the next.
    """

    model_cfg: ModelConfig
    state: dict[str, Tensor]
    store: DataStore
    bank: FeatureBank | None  # None: no task reads stored frozen features (fine-tuning only)
    seed: int = 0
    device: torch.device = torch.device("cpu")
    progress: Callable[[str], None] | None = None
    tf_same: bool = False  # Haiku-trained weights (an imported official checkpoint)
    unit_range: bool = False  # ... trained on [0, 1] images (COCO; weights_take_unit_range)

    def backbone(self, *, dilate_last_stage: bool = False, trainable: bool = False) -> nn.Module:
        """A fresh encoder; frozen (eval mode, no gradient) unless ``trainable``."""
        net = make_backbone(
            self.model_cfg,
            self.state,
            dilate_last_stage=dilate_last_stage,
            tf_same=self.tf_same,
            unit_range=self.unit_range,
        )
        net.to(self.device)
        if not trainable:
            net.eval().requires_grad_(False)
        return net

    def seed_for(self, *parts: int | str) -> int:
        """A seed for one task's initialisation or data order: a function of the evaluation seed
        and the task's name only, so a task gives the same result whichever others ran."""
        return derive_seed(self.seed, *parts)

    def generator(self, *parts: int | str) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed_for(*parts))

    def log(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)
