"""L4 — training: the trainer, checkpoints and run folders, exact resume, guide training."""

from pairgraph.training.guide import train_guide
from pairgraph.training.launch import resume_run, train
from pairgraph.training.trainer import Trainer

__all__ = ["Trainer", "resume_run", "train", "train_guide"]
