"""Training MACE with the mace-organics recipe (mlip's default optimiser, EMA, scheduled loss).

    from mace_ase.training import TrainSettings, train
    summary = train(TrainSettings(train_file="data.xyz", epochs=50, output_dir="run"))

Modules: data (readers, units, splits), statistics (E0, neighbours, scaling),
batching (fixed-shape padded batches), loss, optimizer, ema, checkpoint,
metrics (JSON lines + PNG), settings (all options), trainer (the loop, export).
"""

from .batching import BatchShape
from .data import Frame, read_ase, read_frames, read_hdf5, read_rmd17, split_frames
from .loss import LossWeights
from .optimizer import OptimizerSettings, learning_rate_schedule, make_optimizer
from .settings import TrainSettings
from .trainer import train

__all__ = [
    "BatchShape",
    "Frame",
    "LossWeights",
    "OptimizerSettings",
    "TrainSettings",
    "learning_rate_schedule",
    "make_optimizer",
    "read_ase",
    "read_frames",
    "read_hdf5",
    "read_rmd17",
    "split_frames",
    "train",
]
