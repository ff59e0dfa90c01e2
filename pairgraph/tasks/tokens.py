"""Token tasks: the shared :class:`TokenTask` base and the generated ``copy_paste`` and ``parity``
tasks (formats in the :mod:`pairgraph.tasks` docstring).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field, field_validator
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from pairgraph.config.names import TASKS
from pairgraph.errors import PairgraphError
from pairgraph.tasks.base import (
    IGNORE_INDEX,
    LOSS_DESCRIPTION,
    LossKind,
    OptionsBase,
    Task,
    class_loss,
    predicted_class,
)


class TokenTask(Task):
    """A task whose inputs are (B, T) int64 token ids, optionally with a pad id."""

    input_kind: ClassVar[str] = "tokens"

    # set by subclasses (may be properties)
    pad_id: int | None = None

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def max_len(self) -> int:
        raise NotImplementedError

    def non_pad_ids(self) -> Tensor:
        ids = torch.arange(self.vocab_size)
        return ids if self.pad_id is None else ids[ids != self.pad_id]

    def valid_mask(self, x: Tensor) -> Tensor | None:
        return None if self.pad_id is None else x != self.pad_id

    def example_input(self, batch_size: int, device: str | torch.device = "meta") -> Tensor:
        shape = (batch_size, self.max_len)
        if torch.device(device).type == "meta":
            return torch.empty(shape, dtype=torch.long, device="meta")
        ids = self.non_pad_ids()  # a real-looking batch: every position a (distinct) real token
        pattern = ids[torch.arange(batch_size * self.max_len) % len(ids)].reshape(shape)
        return pattern.to(device)

    def noise_input(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Uniformly random non-pad tokens of ``x``'s shape; pad positions stay pad."""
        if x.device.type == "meta":
            return torch.empty_like(x)
        ids = self.non_pad_ids()
        dev = generator.device if generator is not None else torch.device("cpu")
        pick = torch.randint(0, len(ids), tuple(x.shape), generator=generator, device=dev)
        noise = ids.to(dev)[pick].to(device=x.device, dtype=x.dtype)
        if self.pad_id is not None:
            noise = torch.where(x == self.pad_id, x, noise)
        return noise


class _GeneratedOptions(OptionsBase):
    """Options of a generated sequence task: a ``length`` range [min, max]."""

    length: tuple[int, int]

    @field_validator("length")
    @classmethod
    def _length_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError(f"need 1 <= min <= max, got {list(v)}")
        return v


def _split_80_10_10(x: Tensor, y: Tensor) -> dict[str, Dataset]:
    n = len(x)
    n_train, n_val = int(0.8 * n), int(0.1 * n)
    cut = [0, n_train, n_train + n_val, n]
    return {name: TensorDataset(x[a:b], y[a:b]) for name, a, b in zip(("train", "val", "test"), cut[:-1], cut[1:])}


# ----------------------------------------------------------------------------------------------
# copy-paste
# ----------------------------------------------------------------------------------------------


class CopyPasteOptions(_GeneratedOptions):
    """Copy-paste (Graves 2014; paper §4.1): reproduce a random sequence after a copy marker."""

    kind: Literal["copy_paste"] = "copy_paste"
    tokens: int = Field(default=10, ge=1, le=100_000, description="Number of distinct symbols (ids 1..tokens).")
    length: tuple[int, int] = Field(
        default=(5, 10),
        description=(
            "Inclusive range [min, max] of the length L of the sequence to copy; an example is "
            "2L+2 tokens (sequence, copy marker, L blanks, eos). The paper's '20-40 values total' is [9, 19]."
        ),
    )
    size: int = Field(
        default=100_000, ge=10, description="Total number of examples, split 80/10/10 into train/val/test."
    )
    loss: LossKind = Field(default="ce", description=LOSS_DESCRIPTION)


@TASKS.register("copy_paste")
class CopyPasteTask(TokenTask):
    """Copy-paste; see the :mod:`pairgraph.tasks` docstring for the vocabulary and the format."""

    name: ClassVar[str] = "copy_paste"
    Options: ClassVar[type[BaseModel]] = CopyPasteOptions
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    pad_id = 0

    @property
    def copy_id(self) -> int:
        return self.options.tokens + 1

    @property
    def blank_id(self) -> int:
        return self.options.tokens + 2

    @property
    def eos_id(self) -> int:
        return self.options.tokens + 3

    @property
    def vocab_size(self) -> int:
        return self.options.tokens + 4

    @property
    def max_len(self) -> int:
        return 2 * self.options.length[1] + 2

    def model_kwargs(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab_size,
            "num_classes": self.vocab_size,
            "pad_id": self.pad_id,
            "max_len": self.max_len,
        }

    def generate(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """``n`` examples (x, y) as (n, max_len) int64 tensors, deterministic for ``seed``."""
        lo, hi = self.options.length
        rng = np.random.default_rng(seed)
        lengths = rng.integers(lo, hi + 1, size=n)
        symbols = rng.integers(1, self.options.tokens + 1, size=(n, hi))
        t = self.max_len
        pos = np.arange(t)[None, :]
        ln = lengths[:, None]
        seq_part = np.take_along_axis(symbols, np.minimum(pos, hi - 1).repeat(n, 0), axis=1)
        copy_idx = np.clip(pos - ln - 1, 0, hi - 1)
        copied = np.take_along_axis(symbols, copy_idx, axis=1)
        is_copy = (pos > ln) & (pos <= 2 * ln)
        x = np.full((n, t), self.pad_id, dtype=np.int64)
        x = np.where(pos < ln, seq_part, x)
        x = np.where(pos == ln, self.copy_id, x)
        x = np.where(is_copy, self.blank_id, x)
        x = np.where(pos == 2 * ln + 1, self.eos_id, x)
        y = np.where(is_copy, copied, IGNORE_INDEX).astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)), torch.from_numpy(y)

    def datasets(self, seed: int) -> dict[str, Dataset]:
        x, y = self.generate(self.options.size, seed)
        return _split_80_10_10(x, y)

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        self._check_positions(logits, y)
        self._check_outputs(logits, self.vocab_size)
        flat_logits, flat_y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
        keep = flat_y != IGNORE_INDEX
        return class_loss(flat_logits[keep], flat_y[keep], self.options.loss)

    @torch.no_grad()
    def metrics(self, logits: Tensor, y: Tensor) -> dict[str, tuple[float, int]]:
        """``accuracy``: per-token on the copy positions; ``sequence_accuracy``: all copy positions right."""
        keep = y != IGNORE_INDEX
        right = (predicted_class(logits) == y) & keep
        has_target = keep.any(-1)
        seq_right = (right.sum(-1) == keep.sum(-1)) & has_target
        return {
            "accuracy": (float(right.sum()), int(keep.sum())),
            "sequence_accuracy": (float(seq_right.sum()), int(has_target.sum())),
        }


# ----------------------------------------------------------------------------------------------
# parity
# ----------------------------------------------------------------------------------------------


class ParityOptions(_GeneratedOptions):
    """Parity (paper §4.1; Bhattamishra et al. 2020): is the number of ones in a bitstring even?"""

    kind: Literal["parity"] = "parity"
    length: tuple[int, int] = Field(
        default=(2, 50), description="Inclusive range [min, max] of bitstring lengths; inputs are padded to max."
    )
    size: int = Field(
        default=100_000, ge=10, description="Total number of examples, split 80/10/10 into train/val/test."
    )
    loss: LossKind = Field(
        default="bce", description=LOSS_DESCRIPTION + " With 'bce' the model emits a single logit (num_classes=1)."
    )


@TASKS.register("parity")
class ParityTask(TokenTask):
    """Parity: tokens 0/1, pad 2 (right padding); label 1 when the count of ones is even."""

    name: ClassVar[str] = "parity"
    Options: ClassVar[type[BaseModel]] = ParityOptions
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    pad_id = 2

    @property
    def vocab_size(self) -> int:
        return 3

    @property
    def max_len(self) -> int:
        return self.options.length[1]

    @property
    def num_classes(self) -> int:
        return 1 if self.options.loss == "bce" else 2

    def model_kwargs(self) -> dict[str, Any]:
        return {"vocab_size": 3, "num_classes": self.num_classes, "pad_id": self.pad_id, "max_len": self.max_len}

    def generate(self, n: int, seed: int) -> tuple[Tensor, Tensor]:
        lo, hi = self.options.length
        rng = np.random.default_rng(seed)
        lengths = rng.integers(lo, hi + 1, size=n)
        bits = rng.integers(0, 2, size=(n, hi))
        real = np.arange(hi)[None, :] < lengths[:, None]
        x = np.where(real, bits, self.pad_id).astype(np.int64)
        y = ((bits * real).sum(1) % 2 == 0).astype(np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)

    def datasets(self, seed: int) -> dict[str, Dataset]:
        x, y = self.generate(self.options.size, seed)
        return _split_80_10_10(x, y)

    def _as_2d(self, logits: Tensor) -> Tensor:
        if logits.dim() == 1:
            logits = logits[:, None]
        if logits.dim() != 2:
            raise PairgraphError(
                f"parity expects one prediction per sequence, logits of shape (B, {self.num_classes}); "
                f"got {tuple(logits.shape)}",
                "pool the sequence in the model (e.g. its last valid position)",
            )
        self._check_outputs(logits, self.num_classes)
        return logits

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return class_loss(self._as_2d(logits), y.reshape(-1).long(), self.options.loss)

    @torch.no_grad()
    def metrics(self, logits: Tensor, y: Tensor) -> dict[str, tuple[float, int]]:
        right = predicted_class(self._as_2d(logits)) == y.reshape(-1)
        return {"accuracy": (float(right.sum()), int(right.numel()))}
