"""DetCon ablation lab: a reproducible reimplementation of contrastive detection pretraining
(Hénaff et al., ICCV 2021) with its paper ablations as data."""

__version__ = "0.1.0"
