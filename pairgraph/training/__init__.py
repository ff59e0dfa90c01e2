"""L4 — training: the trainer, checkpoints and run folders, exact resume, guide training."""

from pairgraph.training.launch import TrainablePair, compile, resume_run, train
from pairgraph.training.trainer import Trainer

__all__ = ["TrainablePair", "Trainer", "compile", "resume_run", "train"]
