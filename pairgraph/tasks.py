"""Tasks: data, task loss and metrics for guidance experiments (paper §4.1, appendices D and G).

Every task is a :class:`Task` subclass registered in :data:`TASKS` under its ``name``; the spec's
``task:`` mapping validates against the task's ``Options`` (pydantic, ``extra="forbid"``) and
:func:`get_task` builds the task from it. Building a task is cheap: data is read or generated
only when :meth:`Task.datasets` is called (or, for data-dependent vocabularies/shapes, when
:meth:`Task.model_kwargs` needs it).

Tasks
-----
``copy_paste``
    Graves (2014) copy task. Vocabulary (``K = tokens``): ``0`` pad, ``1..K`` symbols, ``K+1`` copy
    marker, ``K+2`` blank, ``K+3`` end-of-sequence; ``vocab_size = K+4``. An example with a
    sequence ``s`` of length ``L`` is ``s_1..s_L, COPY, BLANK×L, EOS`` (total ``2L+2``), right-padded
    with ``0`` to ``2·Lmax+2``. The target is ``s_i`` at the i-th blank and ``-100``
    (``IGNORE_INDEX``) everywhere else: the sequence, the marker, the EOS and the padding are not
    scored (EOS is part of the input, so predicting it would be free). The paper's "20–40 values
    total" corresponds to ``length: [9, 19]``.
``parity``
    Bitstrings of ``0``/``1`` of a length drawn uniformly in ``length``, right-padded with ``2`` to the
    maximum length; label ``1`` when the number of ones is EVEN (paper §4.1), else ``0``. ``y`` is a
    scalar int64 class; with ``loss: bce`` the model emits one logit (``num_classes=1``, predicts 1
    when the logit is > 0), with ``ce``/``mse`` two.
``language_modeling``
    Next-token prediction on a contiguous token stream cut into non-overlapping windows:
    ``x = t[i:i+T]``, ``y = t[i+1:i+T+1]``. Local text files are split 90% / 5% / 5% (train / val /
    test) by position in the token stream; ``hf:`` datasets keep their own splits. Metrics ``loss``
    (token cross-entropy) and ``accuracy``; :meth:`Task.derived_metrics` adds ``perplexity``.
``image_classification``
    CIFAR-10 (offline JPEG archive, decoded once and cached), MNIST-1D (as 1×1×40 images), an
    ImageFolder tree or a Hugging Face image dataset. Metrics ``top1``/``top5``.

Loss option (all tasks): ``ce`` cross-entropy; ``bce`` binary cross-entropy on one logit per
class decision (one-vs-all with one-hot targets, or a single logit for binary parity); ``mse``
mean squared error between the raw (softmax-free) logits and one-hot targets (paper appendix G),
averaged over all elements (positions × classes).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tarfile
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from pairgraph.config.names import TASKS
from pairgraph.errors import PairgraphError, SpecError
from pairgraph.paths import cache_dir, data_root

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "CopyPasteTask",
    "ImageClassificationTask",
    "LanguageModelingTask",
    "ParityTask",
    "Task",
    "cache_dir",
    "data_root",
    "get_task",
    "gpt2_encoding",
]

IGNORE_INDEX = -100
LossKind = Literal["ce", "bce", "mse"]
_LOSS_DESCRIPTION = (
    "Task loss: 'ce' cross-entropy, 'bce' binary cross-entropy with one logit per class decision, "
    "'mse' mean squared error between raw logits and one-hot targets (paper appendix G)."
)
_DATA_HINT = "set task.data_dir or PAIRGRAPH_DATA to the folder holding it"
_CACHE_VERSION = 1
_SPLIT_SEED = 0  # real-data subsets (val carve, train/test subsets) do not depend on the run seed
_MEMO: dict[str, Any] = {}  # in-process memo of loaded arrays, keyed by cache file


# ----------------------------------------------------------------------------------------------
# locations
# ----------------------------------------------------------------------------------------------


def _hash(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _file_signature(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed .npz atomically; a cache that cannot be written only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:  # read-only home, full disk: run uncached
        warnings.warn(f"pairgraph: could not write cache {path}: {e}", stacklevel=3)


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:  # truncated/corrupt cache: rebuild
        warnings.warn(f"pairgraph: ignoring unreadable cache {path}: {e}", stacklevel=3)
        return None


@contextlib.contextmanager
def _hf_quiet(offline: bool) -> Iterator[Any]:
    """Import ``datasets`` with progress bars off and, for local files, hub access disabled."""
    import datasets
    import datasets.config as hf_config

    old_offline = hf_config.HF_HUB_OFFLINE
    bars_were_off = datasets.are_progress_bars_disabled()
    if offline:
        hf_config.HF_HUB_OFFLINE = True
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        hf_config.HF_HUB_OFFLINE = old_offline
        if not bars_were_off:
            datasets.enable_progress_bars()


def _parse_hf(source: str) -> tuple[str, str | None]:
    rest = source[3:]
    name, _, config = rest.partition(":")
    if not name:
        raise PairgraphError(f"bad Hugging Face source {source!r}", "write it as 'hf:<name>' or 'hf:<name>:<config>'")
    return name, (config or None)


def _hf_load(source: str) -> Any:
    name, config = _parse_hf(source)
    with _hf_quiet(offline=False) as datasets:
        try:
            return datasets.load_dataset(name, config, cache_dir=str(cache_dir() / "hf"))
        except (OSError, ValueError, RuntimeError, ImportError) as e:  # network, unknown name, bad config
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PairgraphError(
                f"could not load Hugging Face dataset {source!r}: {msg}",
                "check the name/config and your internet connection (Hugging Face datasets are downloaded)",
            ) from None


# ----------------------------------------------------------------------------------------------
# losses and metrics shared by tasks
# ----------------------------------------------------------------------------------------------


def _class_loss(logits: Tensor, y: Tensor, kind: str) -> Tensor:
    """Mean loss of (N, C) logits against (N,) int targets (C == 1: binary, one logit)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    c = logits.shape[-1]
    if kind == "ce":
        return F.cross_entropy(logits.float(), y)
    if c == 1:
        target = y.to(logits.dtype)
        out = logits[:, 0]
    else:
        target = F.one_hot(y, c).to(logits.dtype)
        out = logits
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(out.float(), target.float())
    if kind == "mse":
        return F.mse_loss(out.float(), target.float())
    raise PairgraphError(f"unknown loss {kind!r}", "use 'ce', 'bce' or 'mse'")


def _predict(logits: Tensor) -> Tensor:
    """Predicted class of (N, C) logits; a single logit predicts 1 when positive."""
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).long()
    return logits.argmax(-1)


class _OptionsBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------------------------
# base class and registry
# ----------------------------------------------------------------------------------------------


class Task:
    """A task: its data, input kind, model arguments, loss and metrics.

    Subclasses set ``name``, ``Options``, ``input_kind``, ``primary_metric`` and
    ``higher_is_better`` and implement the data/loss methods. ``__init__`` must stay cheap.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = _OptionsBase
    input_kind: ClassVar[str] = "tokens"
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    def __init__(self, options: BaseModel | Mapping[str, Any] | None = None):
        if options is None:
            options = self.Options()
        elif isinstance(options, Mapping):
            options = _validate_options(self.Options, {"kind": self.name, **options})
        elif not isinstance(options, self.Options):
            options = _validate_options(self.Options, options.model_dump())
        self.options: Any = options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"

    # -- to implement ---------------------------------------------------------------------------
    def model_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def example_input(self, batch_size: int, device: str | torch.device = "meta") -> Tensor:
        raise NotImplementedError

    def datasets(self, seed: int) -> dict[str, Dataset]:
        raise NotImplementedError

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def metrics(self, logits: Tensor, y: Tensor) -> dict[str, tuple[float, int]]:
        raise NotImplementedError

    def valid_mask(self, x: Tensor) -> Tensor | None:
        return None

    def noise_input(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    # -- defaults -------------------------------------------------------------------------------
    def derived_metrics(self, agg: dict[str, float]) -> dict[str, float]:
        """Metrics computed from the aggregated means (sum / count); default: unchanged."""
        return dict(agg)

    def _check_positions(self, logits: Tensor, y: Tensor) -> None:
        if tuple(logits.shape[:-1]) != tuple(y.shape):
            raise PairgraphError(
                f"task {self.name} expects logits of shape {tuple(y.shape)} + (classes,), got {tuple(logits.shape)}",
                "make the model emit one prediction per input position",
            )

    def _check_outputs(self, logits: Tensor, expected: int) -> None:
        if logits.shape[-1] != expected:
            raise PairgraphError(
                f"model outputs {logits.shape[-1]} values per prediction but task {self.name} "
                f"(loss={self.options.loss}) expects {expected}",
                f"build the model with the task's model_kwargs() (num_classes={expected})",
            )




def _validate_options(options_cls: type[BaseModel], data: Any) -> BaseModel:
    try:
        return options_cls.model_validate(data)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"task.{loc}: {err.get('msg')}" if loc else f"task: {err.get('msg')}")
        kind = data.get("kind") if isinstance(data, Mapping) else None
        raise SpecError(
            "; ".join(parts),
            f"see the options of task {kind!r} in the spec schema" if kind else None,
        ) from None


def get_task(options_or_dict: Task | BaseModel | Mapping[str, Any] | str) -> Task:
    """Build a task from a ``{"kind": ..., **options}`` mapping, an ``Options`` instance or a name."""
    if isinstance(options_or_dict, Task):
        return options_or_dict
    if isinstance(options_or_dict, str):
        return TASKS.get(options_or_dict)()
    if isinstance(options_or_dict, BaseModel):
        kind = getattr(options_or_dict, "kind", None)
        if kind is None:
            raise PairgraphError(f"{type(options_or_dict).__name__} is not task options", "pass a task's Options")
        return TASKS.get(kind)(options_or_dict)
    if isinstance(options_or_dict, Mapping):
        kind = options_or_dict.get("kind")
        if not kind:
            raise SpecError("task: missing 'kind'", "choose one of " + ", ".join(TASKS.names()))
        cls = TASKS.get(str(kind))
        return cls(_validate_options(cls.Options, dict(options_or_dict)))
    raise PairgraphError(f"cannot build a task from {type(options_or_dict).__name__}", "pass a mapping with 'kind'")


# ----------------------------------------------------------------------------------------------
# token tasks
# ----------------------------------------------------------------------------------------------


class _TokenTask(Task):
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


class _GeneratedOptions(_OptionsBase):
    """Options of a generated sequence task: a ``length`` range [min, max]."""

    length: tuple[int, int]

    @field_validator("length")
    @classmethod
    def _length_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError(f"need 1 <= min <= max, got {list(v)}")
        return v


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
    loss: LossKind = Field(default="ce", description=_LOSS_DESCRIPTION)


@TASKS.register("copy_paste")
class CopyPasteTask(_TokenTask):
    """Copy-paste; see the module docstring for the vocabulary and the format."""

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
        return _class_loss(flat_logits[keep], flat_y[keep], self.options.loss)

    @torch.no_grad()
    def metrics(self, logits: Tensor, y: Tensor) -> dict[str, tuple[float, int]]:
        """``accuracy``: per-token on the copy positions; ``sequence_accuracy``: all copy positions right."""
        keep = y != IGNORE_INDEX
        right = (_predict(logits) == y) & keep
        has_target = keep.any(-1)
        seq_right = (right.sum(-1) == keep.sum(-1)) & has_target
        return {
            "accuracy": (float(right.sum()), int(keep.sum())),
            "sequence_accuracy": (float(seq_right.sum()), int(has_target.sum())),
        }


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
        default="bce", description=_LOSS_DESCRIPTION + " With 'bce' the model emits a single logit (num_classes=1)."
    )


@TASKS.register("parity")
class ParityTask(_TokenTask):
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
        return _class_loss(self._as_2d(logits), y.reshape(-1).long(), self.options.loss)

    @torch.no_grad()
    def metrics(self, logits: Tensor, y: Tensor) -> dict[str, tuple[float, int]]:
        right = _predict(self._as_2d(logits)) == y.reshape(-1)
        return {"accuracy": (float(right.sum()), int(right.numel()))}


def _split_80_10_10(x: Tensor, y: Tensor) -> dict[str, Dataset]:
    n = len(x)
    n_train, n_val = int(0.8 * n), int(0.1 * n)
    cut = [0, n_train, n_train + n_val, n]
    return {name: TensorDataset(x[a:b], y[a:b]) for name, a, b in zip(("train", "val", "test"), cut[:-1], cut[1:])}


# ----------------------------------------------------------------------------------------------
# language modeling
# ----------------------------------------------------------------------------------------------


def _gpt2_pat_str() -> str:
    try:
        from tiktoken_ext.openai_public import r50k_pat_str

        return r50k_pat_str
    except ImportError:  # older tiktoken
        return r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_encoding(data_dir: str | os.PathLike[str] | None = None) -> Any:
    """The GPT-2 BPE as a ``tiktoken.Encoding``, built offline from ``<data_root>/gpt2/``.

    Uses ``encoder.json`` and ``vocab.bpe`` there when both exist; otherwise falls back to
    ``tiktoken.get_encoding("gpt2")``, which downloads them.
    """
    import tiktoken
    import tiktoken.load

    folder = data_root(data_dir) / "gpt2"
    enc_json, vocab_bpe = folder / "encoder.json", folder / "vocab.bpe"
    key = f"gpt2:{folder.resolve() if folder.exists() else folder}"
    if key in _MEMO:
        return _MEMO[key]
    if enc_json.is_file() and vocab_bpe.is_file():
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(enc_json)
        )
        enc = tiktoken.Encoding(
            name="gpt2", pat_str=_gpt2_pat_str(), mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
        )
    else:
        try:
            enc = tiktoken.get_encoding("gpt2")
        except (OSError, ValueError, ImportError):  # offline: requests' errors are OSErrors
            raise PairgraphError(
                f"GPT-2 BPE files not found at {enc_json} and {vocab_bpe}, and tiktoken could not download them",
                "set task.data_dir or PAIRGRAPH_DATA to a folder holding gpt2/encoder.json and gpt2/vocab.bpe, "
                "or use tokenizer: char",
            ) from None
    _MEMO[key] = enc
    return enc


class LanguageModelingOptions(_OptionsBase):
    """Next-token language modeling (paper §4.1 uses WikiText-103, GPT-2 BPE, context 50)."""

    kind: Literal["language_modeling"] = "language_modeling"
    source: str = Field(
        default="tinyshakespeare.txt",
        description=(
            "Text source: a local text file (relative paths are looked up under the data folder, then "
            "the current directory; split 90/5/5 into train/val/test), or 'hf:<name>[:<config>]', e.g. "
            "'hf:wikitext:wikitext-103-raw-v1' (Hugging Face datasets, needs internet; own splits)."
        ),
    )
    tokenizer: Literal["gpt2", "char"] = Field(
        default="gpt2",
        description="'gpt2' BPE via tiktoken (offline from <data>/gpt2/), or 'char' (sorted characters of the training text).",
    )
    context: int = Field(
        default=50, ge=1, description="Context length T: x = t[i:i+T], y = t[i+1:i+T+1], non-overlapping."
    )
    data_dir: str | None = Field(default=None, description="Data folder; default $PAIRGRAPH_DATA, else ../shared/data.")
    max_tokens: int | None = Field(
        default=None,
        ge=2,
        description="Keep at most this many tokens of each split (a prefix), for CPU runs; None keeps all.",
    )
    loss: LossKind = Field(default="ce", description=_LOSS_DESCRIPTION)


class _LMDataset(Dataset):
    """Non-overlapping windows of a token stream: item i is (t[iT:iT+T], t[iT+1:iT+T+1])."""

    def __init__(self, tokens: np.ndarray, context: int):
        self.tokens = np.ascontiguousarray(tokens)  # native (uint16) dtype; int64 per item
        self.context = context
        self.n = max(0, (len(tokens) - 1) // context)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not -self.n <= i < self.n:
            raise IndexError(i)
        i %= self.n
        t = torch.from_numpy(self.tokens[i * self.context : i * self.context + self.context + 1].astype(np.int64))
        return t[:-1], t[1:]


@TASKS.register("language_modeling")
class LanguageModelingTask(_TokenTask):
    """Language modeling on a local text file or a Hugging Face text dataset."""

    name: ClassVar[str] = "language_modeling"
    Options: ClassVar[type[BaseModel]] = LanguageModelingOptions
    primary_metric: ClassVar[str] = "perplexity"
    higher_is_better: ClassVar[bool] = False
    pad_id = None

    @property
    def vocab_size(self) -> int:
        if self.options.tokenizer == "gpt2":
            return 50257
        return int(self._streams()["vocab_size"][0])

    @property
    def max_len(self) -> int:
        return self.options.context

    def model_kwargs(self) -> dict[str, Any]:
        v = self.vocab_size
        return {"vocab_size": v, "num_classes": v, "pad_id": None, "max_len": self.options.context}

    def example_input(self, batch_size: int, device: str | torch.device = "meta") -> Tensor:
        return torch.zeros((batch_size, self.options.context), dtype=torch.long, device=device)

    # -- data -----------------------------------------------------------------------------------
    def _local_path(self) -> Path:
        src = Path(self.options.source).expanduser()
        root = data_root(self.options.data_dir)
        if src.is_absolute():
            path = src
        elif (root / src).is_file():
            path = root / src
        elif src.is_file():
            path = src
        else:
            path = root / src
        if not path.is_file():
            raise PairgraphError(
                f"text file not found at {path}",
                f"{_DATA_HINT}, or set task.source to an existing text file or 'hf:<name>[:<config>]'",
            )
        return path

    def char_vocab(self) -> list[str]:
        """Characters of the char vocabulary in id order (char tokenizer only)."""
        s = self._streams()
        return [chr(c) for c in s["vocab"].tolist()]

    def _streams(self) -> dict[str, np.ndarray]:
        """Token streams of the three splits (+ char vocabulary), cached as .npz under cache_dir()."""
        memo = getattr(self, "_streams_memo", None)
        if memo is not None:
            return memo
        tok = self.options.tokenizer
        if self.options.source.startswith("hf:"):
            ident = f"hf|{self.options.source}"
            stem = _parse_hf(self.options.source)[0].replace("/", "_")
            path = None
        else:
            path = self._local_path()
            ident = f"file|{_file_signature(path)}"
            stem = path.stem
        cache = cache_dir() / "lm" / f"{stem}-{tok}-{_hash(ident, tok, _CACHE_VERSION)}.npz"
        arrays = _MEMO.get(str(cache)) or _load_npz(cache)
        if arrays is None:
            texts = self._read_texts(path)
            arrays = self._tokenize(texts)
            _save_npz(cache, **arrays)
        _MEMO[str(cache)] = arrays
        self._streams_memo = arrays
        return arrays

    def _read_texts(self, path: Path | None) -> dict[str, list[str]]:
        """Split name → list of documents. Local files are one document (split later by tokens)."""
        if path is not None:
            with _hf_quiet(offline=True) as datasets:
                ds = datasets.load_dataset(
                    "text",
                    data_files={"train": str(path)},
                    sample_by="document",
                    cache_dir=str(cache_dir() / "hf"),
                    split="train",
                )
            return {"all": ["".join(ds["text"])]}
        dd = _hf_load(self.options.source)
        out: dict[str, list[str]] = {}
        aliases = {"train": ("train",), "val": ("validation", "valid", "val", "dev"), "test": ("test",)}
        for ours, theirs in aliases.items():
            split = next((s for s in theirs if s in dd), None)
            if split is None:
                continue
            d = dd[split]
            col = (
                "text"
                if "text" in d.column_names
                else next(
                    (c for c, f in d.features.items() if getattr(f, "dtype", None) in ("string", "large_string")), None
                )
            )
            if col is None:
                raise PairgraphError(f"{self.options.source} split {split!r} has no text column", "use a text dataset")
            out[ours] = [t if t.endswith("\n") else t + "\n" for t in d[col] if t]
        if "train" not in out:
            raise PairgraphError(
                f"{self.options.source} has no 'train' split (has {list(dd)})", "use a dataset with a train split"
            )
        return out

    def _tokenize(self, texts: dict[str, list[str]]) -> dict[str, np.ndarray]:
        tok = self.options.tokenizer
        if "all" in texts:  # one local document: split 90/5/5 by position in the token stream
            text = texts["all"][0]
            if tok == "char":
                n = len(text)
                a, b = int(0.9 * n), int(0.95 * n)
                parts = {"train": [text[:a]], "val": [text[a:b]], "test": [text[b:]]}
                return self._encode_char(parts)
            stream = np.asarray(gpt2_encoding(self.options.data_dir).encode_ordinary(text), dtype=np.uint16)
            n = len(stream)
            a, b = int(0.9 * n), int(0.95 * n)
            return {"train": stream[:a], "val": stream[a:b], "test": stream[b:], "vocab_size": np.array([50257])}
        if tok == "char":
            out = self._encode_char(texts)
        else:
            enc = gpt2_encoding(self.options.data_dir)
            out = {}
            for split, docs in texts.items():
                chunks = [np.zeros(0, dtype=np.uint16)]
                for i in range(0, len(docs), 10_000):  # bounded memory for large corpora
                    ids = enc.encode_ordinary_batch(docs[i : i + 10_000])
                    chunks.extend(np.asarray(d, dtype=np.uint16) for d in ids if d)
                out[split] = np.concatenate(chunks)
            out["vocab_size"] = np.array([50257])
        # carve missing val/test splits from the end of train (5% each)
        for split in ("test", "val"):
            if split not in out:
                train = out["train"]
                cut = int(0.95 * len(train))
                out[split], out["train"] = train[cut:], train[:cut]
        return out

    @staticmethod
    def _encode_char(parts: dict[str, list[str]]) -> dict[str, np.ndarray]:
        train_text = "".join(parts["train"])
        chars = sorted(set(train_text))
        unseen = {c for split, docs in parts.items() if split != "train" for d in docs for c in d} - set(chars)
        lut = {c: i for i, c in enumerate(chars)}
        unk = len(chars)  # an extra id only when val/test hold characters unseen in training
        vocab_size = len(chars) + (1 if unseen else 0)
        dtype = np.uint16 if vocab_size < 2**16 else np.int32
        out: dict[str, np.ndarray] = {}
        for split, docs in parts.items():
            text = "".join(docs)
            out[split] = np.fromiter((lut.get(c, unk) for c in text), dtype=dtype, count=len(text))
        out["vocab"] = np.array([ord(c) for c in chars], dtype=np.int32)
        out["vocab_size"] = np.array([vocab_size])
        return out

    def datasets(self, seed: int) -> dict[str, Dataset]:
        """Non-overlapping windows of each split's token stream (``seed`` is unused: data is fixed)."""
        s = self._streams()
        out: dict[str, Dataset] = {}
        for split in ("train", "val", "test"):
            stream = s[split]
            if self.options.max_tokens is not None:
                stream = stream[: self.options.max_tokens]
            if len(stream) < self.options.context + 1:
                raise PairgraphError(
                    f"the {split} split of {self.options.source} has {len(stream)} tokens, fewer than context+1 = "
                    f"{self.options.context + 1}",
                    "use a longer text, a larger task.max_tokens or a smaller task.context",
                )
            out[split] = _LMDataset(stream, self.options.context)
        return out

    # -- loss and metrics -----------------------------------------------------------------------
    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        self._check_positions(logits, y)
        flat = logits.reshape(-1, logits.shape[-1])
        self._check_outputs(flat, self.vocab_size)
        return _class_loss(flat, y.reshape(-1).long(), self.options.loss)

    @torch.no_grad()
    def metrics(self, logits: Tensor, y: Tensor) -> dict[str, tuple[float, int]]:
        """``loss``: summed token cross-entropy (whatever the training loss); ``accuracy``: next-token."""
        flat, target = logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1).long()
        ce = F.cross_entropy(flat, target, reduction="sum")
        right = flat.argmax(-1) == target
        return {"loss": (float(ce), int(target.numel())), "accuracy": (float(right.sum()), int(target.numel()))}

    def derived_metrics(self, agg: dict[str, float]) -> dict[str, float]:
        out = dict(agg)
        if "loss" in agg:
            out["perplexity"] = math.exp(agg["loss"]) if agg["loss"] < 700 else math.inf
        return out


# ----------------------------------------------------------------------------------------------
# image classification
# ----------------------------------------------------------------------------------------------

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_ARCHIVE = "cifar10-jpeg.tar.xz"


class ImageClassificationOptions(_OptionsBase):
    """Image classification (paper §4.1: deep/wide FCNs and a plain deep ConvNet on images)."""

    kind: Literal["image_classification"] = "image_classification"
    dataset: str = Field(
        default="cifar10",
        description=(
            "'cifar10' (<data>/cifar10-jpeg.tar.xz, decoded once and cached), 'mnist1d' (procedural, "
            "shown as 1x1x40 images), 'folder:<path>' (ImageFolder with train/ and test/), or "
            "'hf:<name>[:<config>]' (Hugging Face image dataset with image and label columns; needs internet)."
        ),
    )
    data_dir: str | None = Field(default=None, description="Data folder; default $PAIRGRAPH_DATA, else ../shared/data.")
    train_size: int | None = Field(
        default=None, ge=1, description="Use this many training images (a fixed subset); None uses all left after val."
    )
    val_size: int | None = Field(
        default=None,
        ge=0,
        description="Validation images carved from the training set (fixed); None = 10% of it (5,000 for CIFAR-10, 400 for MNIST-1D).",
    )
    test_size: int | None = Field(
        default=None, ge=1, description="Use this many test images (a fixed subset); None uses all."
    )
    augment: bool = Field(
        default=False, description="Training augmentation: random crop with padding 4 and horizontal flip."
    )
    normalize: bool = Field(
        default=True,
        description="Normalize with per-channel mean/std (CIFAR-10's standard values; else the training set's).",
    )
    image_size: tuple[int, int] | None = Field(
        default=None, description="Resize folder:/hf: images to (H, W); None requires them all to share one size."
    )
    num_classes: int | None = Field(
        default=None, ge=1,
        description="Classes of a folder:/hf: dataset; with image_size set, compiling needs no data on disk.",
    )
    loss: LossKind = Field(default="ce", description=_LOSS_DESCRIPTION)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        if v in ("cifar10", "mnist1d") or (v.startswith(("folder:", "hf:")) and len(v.split(":", 1)[1]) > 0):
            return v
        raise ValueError(f"unknown dataset {v!r}: use 'cifar10', 'mnist1d', 'folder:<path>' or 'hf:<name>'")

    @model_validator(mode="after")
    def _positive_size(self) -> ImageClassificationOptions:
        if self.image_size is not None and min(self.image_size) < 1:
            raise ValueError("image_size must be positive")
        return self


class _ImageDataset(Dataset):
    """Rows ``idx`` of an (N, C, H, W) uint8 or float array, converted/augmented/normalized per item."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        idx: np.ndarray,
        mean: Tensor | None,
        std: Tensor | None,
        augment: bool,
        hflip: bool,
    ):
        self.images, self.labels = images, labels
        self.idx = torch.as_tensor(idx, dtype=torch.long)
        self.mean, self.std = mean, std
        self.augment, self.hflip = augment, hflip

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        j = int(self.idx[i])
        x = self.images[j]
        x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32, copy=True)
        if self.augment:
            h, w = x.shape[-2:]
            ph, pw = (4 if h > 1 else 0), (4 if w > 1 else 0)
            xp = F.pad(x, (pw, pw, ph, ph))
            top = int(torch.randint(0, 2 * ph + 1, ()))
            left = int(torch.randint(0, 2 * pw + 1, ()))
            x = xp[:, top : top + h, left : left + w]
            if self.hflip and bool(torch.rand(()) < 0.5):
                x = x.flip(-1)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x.contiguous(), self.labels[j]


def _decode_cifar_archive(archive: Path) -> dict[str, np.ndarray]:
    """Decode ``cifar10-jpeg/{train,test}/<class>/*.jpg`` from the tar.xz into NCHW uint8 arrays."""
    from PIL import Image

    found: dict[str, list[tuple[str, str, np.ndarray]]] = {"train": [], "test": []}
    with tarfile.open(archive, "r:*") as tar:
        for m in tar:
            if not m.isfile():
                continue
            parts = PurePosixPath(m.name).parts
            if len(parts) < 3 or parts[-3] not in found or not parts[-1].lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            f = tar.extractfile(m)
            if f is None:
                continue
            with Image.open(io.BytesIO(f.read())) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            found[parts[-3]].append((parts[-2], parts[-1], arr))
    if not found["train"] or not found["test"]:
        raise PairgraphError(
            f"{archive} holds no cifar10-jpeg/train/<class>/*.jpg and test/<class>/*.jpg images",
            "use the CIFAR-10 JPEG archive described in shared/data/README.md",
        )
    classes = sorted({c for c, _, _ in found["train"]})
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split, items in found.items():
        items.sort(key=lambda t: (t[0], t[1]))
        unknown = {c for c, _, _ in items} - set(index)
        if unknown:
            raise PairgraphError(f"{archive}: test classes {sorted(unknown)} are not among the train classes", None)
        shapes = {a.shape for _, _, a in items}
        if len(shapes) != 1:
            raise PairgraphError(
                f"{archive}: images of different sizes {sorted(shapes)[:3]}", "repack with one image size"
            )
        out[f"{split}_x"] = np.ascontiguousarray(np.stack([a for _, _, a in items]).transpose(0, 3, 1, 2))
        out[f"{split}_y"] = np.array([index[c] for c, _, _ in items], dtype=np.int64)
    return out


def _decode_pil_images(images: list[Any], size: tuple[int, int] | None, mode: str, what: str) -> np.ndarray:
    """PIL images → (N, C, H, W) uint8 (resized to ``size`` = (H, W) when given)."""
    from PIL import Image

    arrs = []
    for im in images:
        im = im.convert(mode)
        if size is not None and (im.height, im.width) != tuple(size):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrs.append(a[:, :, None] if a.ndim == 2 else a)
    shapes = {a.shape for a in arrs}
    if len(shapes) > 1:
        raise PairgraphError(f"{what}: images of different sizes {sorted(shapes)[:3]}", "set task.image_size: [H, W]")
    return np.ascontiguousarray(np.stack(arrs).transpose(0, 3, 1, 2))


@TASKS.register("image_classification")
class ImageClassificationTask(Task):
    """Image classification on CIFAR-10, MNIST-1D, an ImageFolder tree or a Hugging Face dataset."""

    name: ClassVar[str] = "image_classification"
    Options: ClassVar[type[BaseModel]] = ImageClassificationOptions
    input_kind: ClassVar[str] = "image"
    primary_metric: ClassVar[str] = "top1"
    higher_is_better: ClassVar[bool] = True

    # -- shapes without loading data where possible --------------------------------------------
    def _shape_info(self) -> tuple[int, int, tuple[int, int]]:
        """(num_classes, in_channels, (H, W)), memoized."""
        info = getattr(self, "_shape_memo", None)
        if info is None:
            info = self._shape_memo = self._compute_shape_info()
        return info

    def _compute_shape_info(self) -> tuple[int, int, tuple[int, int]]:
        ds = self.options.dataset
        if ds == "cifar10":
            return 10, 3, (32, 32)
        if ds == "mnist1d":
            return 10, 1, (1, 40)
        if self.options.num_classes is not None and self.options.image_size is not None:
            return self.options.num_classes, 3, tuple(self.options.image_size)  # type: ignore[return-value]
        if ds.startswith("folder:"):
            root = self._folder_root()
            classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
            if self.options.image_size is not None:
                return len(classes), 3, tuple(self.options.image_size)  # type: ignore[return-value]
            from PIL import Image

            first = next((f for c in classes for f in sorted((root / "train" / c).iterdir()) if f.is_file()), None)
            if first is None:
                raise PairgraphError(f"no images under {root / 'train'}", "put images in train/<class>/")
            with Image.open(first) as im:
                return len(classes), 3, (im.height, im.width)
        arrays = self._arrays()
        c, h, w = arrays["train_x"].shape[1:]
        return len(arrays["classes"]), int(c), (int(h), int(w))

    @property
    def num_classes(self) -> int:
        return self._shape_info()[0]

    def model_kwargs(self) -> dict[str, Any]:
        n, c, hw = self._shape_info()
        return {"num_classes": n, "in_channels": c, "image_size": hw}

    def example_input(self, batch_size: int, device: str | torch.device = "meta") -> Tensor:
        _, c, (h, w) = self._shape_info()
        if torch.device(device).type == "meta":
            return torch.empty((batch_size, c, h, w), device="meta")
        g = torch.Generator().manual_seed(0)
        return torch.randn((batch_size, c, h, w), generator=g).to(device)

    def noise_input(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """N(0, 1) noise of ``x``'s shape (paper appendix, fig. 6)."""
        dtype = x.dtype if x.is_floating_point() else torch.float32
        if x.device.type == "meta":
            return torch.empty(x.shape, dtype=dtype, device="meta")
        dev = generator.device if generator is not None else x.device
        return torch.randn(tuple(x.shape), generator=generator, device=dev, dtype=dtype).to(x.device)

    # -- data -----------------------------------------------------------------------------------
    def _folder_root(self) -> Path:
        raw = Path(self.options.dataset.split(":", 1)[1]).expanduser()
        root = raw
        if not raw.is_absolute() and not raw.is_dir() and (data_root(self.options.data_dir) / raw).is_dir():
            root = data_root(self.options.data_dir) / raw
        for sub in ("train", "test"):
            if not (root / sub).is_dir():
                raise PairgraphError(
                    f"image folder {root / sub} not found",
                    "point dataset: folder:<path> at a folder with train/<class>/ and test/<class>/ subfolders",
                )
        return root

    def _arrays(self) -> dict[str, np.ndarray]:
        """Decoded arrays: train_x, train_y, test_x, test_y, classes (+ cached on disk)."""
        ds = self.options.dataset
        if ds == "cifar10":
            archive = data_root(self.options.data_dir) / CIFAR10_ARCHIVE
            if not archive.is_file():
                raise PairgraphError(f"CIFAR-10 archive not found at {archive}", _DATA_HINT)
            cache = cache_dir() / "cifar10" / f"cifar10-{_hash(_file_signature(archive), _CACHE_VERSION)}.npz"
            return _cached_arrays(cache, lambda: _decode_cifar_archive(archive))
        if ds == "mnist1d":
            return self._mnist1d_arrays()
        if ds.startswith("folder:"):
            root = self._folder_root()
            return self._folder_arrays(root)
        return self._hf_arrays()

    def _mnist1d_arrays(self) -> dict[str, np.ndarray]:
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError:
            raise PairgraphError("MNIST-1D needs the mnist1d package", "pip install mnist1d") from None
        args = get_dataset_args()
        sig = json.dumps({k: v for k, v in sorted(vars(args).items()) if k != "url"}, default=str)
        cache = cache_dir() / "mnist1d" / f"mnist1d-{_hash(sig, _CACHE_VERSION)}.npz"

        def build() -> dict[str, np.ndarray]:
            d = make_dataset(args)  # procedural; never get_dataset (it downloads)
            return {
                "train_x": np.asarray(d["x"], dtype=np.float32)[:, None, None, :],
                "train_y": np.asarray(d["y"], dtype=np.int64),
                "test_x": np.asarray(d["x_test"], dtype=np.float32)[:, None, None, :],
                "test_y": np.asarray(d["y_test"], dtype=np.int64),
                "classes": np.array([str(i) for i in range(10)]),
            }

        return _cached_arrays(cache, build)

    def _folder_arrays(self, root: Path) -> dict[str, np.ndarray]:
        from torchvision.datasets import ImageFolder

        train, test = ImageFolder(str(root / "train")), ImageFolder(str(root / "test"))
        sig = "|".join(
            f"{p}:{Path(p).stat().st_size}:{Path(p).stat().st_mtime_ns}" for p, _ in train.samples + test.samples
        )
        size = self.options.image_size
        cache = cache_dir() / "folder" / f"{root.name}-{_hash(root.resolve(), sig, size, _CACHE_VERSION)}.npz"

        def build() -> dict[str, np.ndarray]:
            index = train.class_to_idx
            missing = set(test.classes) - set(index)
            if missing:
                raise PairgraphError(f"{root / 'test'} has classes {sorted(missing)} not in train/", None)
            out: dict[str, np.ndarray] = {"classes": np.array(train.classes)}
            for split, folder in (("train", train), ("test", test)):
                ims = [folder.loader(p) for p, _ in folder.samples]
                out[f"{split}_x"] = _decode_pil_images(ims, size, "RGB", str(root / split))
                out[f"{split}_y"] = np.array([index[folder.classes[t]] for _, t in folder.samples], dtype=np.int64)
            return out

        return _cached_arrays(cache, build)

    def _hf_arrays(self) -> dict[str, np.ndarray]:
        source = self.options.dataset
        size = self.options.image_size
        name, _ = _parse_hf(source)
        cache = cache_dir() / "hf-images" / f"{name.replace('/', '_')}-{_hash(source, size, _CACHE_VERSION)}.npz"

        def build() -> dict[str, np.ndarray]:
            import datasets

            dd = _hf_load(source)
            train_split = "train" if "train" in dd else None
            test_split = next((s for s in ("test", "validation", "valid", "val") if s in dd), None)
            if train_split is None or test_split is None:
                raise PairgraphError(f"{source} needs a train and a test split (has {list(dd)})", None)
            feats = dd[train_split].features
            img_col = next((c for c, f in feats.items() if isinstance(f, datasets.Image)), None)
            lab_col = next((c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
            lab_col = lab_col or next((c for c in ("label", "labels", "fine_label") if c in feats), None)
            if img_col is None or lab_col is None:
                raise PairgraphError(
                    f"{source} has no image/label columns (columns {list(feats)})",
                    "use an image classification dataset",
                )
            first = dd[train_split][0][img_col]
            mode = "L" if first.mode in ("1", "L", "I", "I;16", "F") else "RGB"
            if isinstance(feats[lab_col], datasets.ClassLabel):
                classes = list(feats[lab_col].names)
            else:
                classes = [str(c) for c in sorted(set(dd[train_split][lab_col]))]
            out: dict[str, np.ndarray] = {"classes": np.array(classes)}
            for ours, split in (("train", train_split), ("test", test_split)):
                d = dd[split]
                out[f"{ours}_x"] = _decode_pil_images(list(d[img_col]), size, mode, f"{source}[{split}]")
                labels = d[lab_col]
                if not isinstance(feats[lab_col], datasets.ClassLabel):
                    index = {str(c): i for i, c in enumerate(classes)}
                    unknown = {str(v) for v in labels} - set(index)
                    if unknown:
                        raise PairgraphError(f"{source}[{split}] has labels {sorted(unknown)[:5]} not in train", None)
                    labels = [index[str(v)] for v in labels]
                out[f"{ours}_y"] = np.asarray(labels, dtype=np.int64)
            return out

        return _cached_arrays(cache, build)

    def datasets(self, seed: int) -> dict[str, Dataset]:
        """Train/val/test splits. Subsets are fixed (independent of ``seed``) so runs compare on the same data."""
        o = self.options
        a = self._arrays()
        train_x, train_y = torch.from_numpy(a["train_x"]), torch.from_numpy(a["train_y"])
        test_x, test_y = torch.from_numpy(a["test_x"]), torch.from_numpy(a["test_y"])
        n_train, n_test = len(train_y), len(test_y)
        val_size = o.val_size if o.val_size is not None else n_train // 10
        if val_size >= n_train:
            raise PairgraphError(
                f"val_size {val_size} leaves no training images (the training set has {n_train})", "lower task.val_size"
            )
        avail = n_train - val_size
        if o.train_size is not None and o.train_size > avail:
            raise PairgraphError(
                f"train_size {o.train_size} exceeds the {avail} training images left after val_size {val_size}",
                "lower task.train_size or task.val_size",
            )
        if o.test_size is not None and o.test_size > n_test:
            raise PairgraphError(f"test_size {o.test_size} exceeds the {n_test} test images", "lower task.test_size")
        rng = np.random.default_rng(_SPLIT_SEED)
        perm = rng.permutation(n_train)
        val_idx = np.sort(perm[:val_size])
        train_idx = np.sort(perm[val_size:][: o.train_size] if o.train_size is not None else perm[val_size:])
        test_perm = rng.permutation(n_test)
        test_idx = np.sort(test_perm[: o.test_size]) if o.test_size is not None else np.arange(n_test)

        mean = std = None
        if o.normalize:
            if o.dataset == "cifar10":
                m, s = np.array(CIFAR10_MEAN), np.array(CIFAR10_STD)
            else:  # per-channel statistics of the full training set
                xs = a["train_x"].astype(np.float64)
                if a["train_x"].dtype == np.uint8:
                    xs /= 255.0
                m, s = xs.mean(axis=(0, 2, 3)), xs.std(axis=(0, 2, 3))
                s = np.where(s > 0, s, 1.0)
            mean = torch.tensor(m, dtype=torch.float32)[:, None, None]
            std = torch.tensor(s, dtype=torch.float32)[:, None, None]
        hflip = o.dataset != "mnist1d"  # flipping a 1-D signal is not a label-preserving transform
        return {
            "train": _ImageDataset(train_x, train_y, train_idx, mean, std, o.augment, hflip),
            "val": _ImageDataset(train_x, train_y, val_idx, mean, std, False, hflip),
            "test": _ImageDataset(test_x, test_y, test_idx, mean, std, False, hflip),
        }

    # -- loss and metrics -----------------------------------------------------------------------
    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        self._check_outputs(logits, self.num_classes)
        return _class_loss(logits.reshape(-1, logits.shape[-1]), y.reshape(-1).long(), self.options.loss)

    @torch.no_grad()
    def metrics(self, logits: Tensor, y: Tensor) -> dict[str, tuple[float, int]]:
        """``top1`` and ``top5`` (top-min(5, classes)) as (correct, count)."""
        logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
        k = min(5, logits.shape[-1])
        topk = logits.topk(k, dim=-1).indices
        hit = topk == y[:, None]
        n = int(y.numel())
        return {"top1": (float(hit[:, 0].sum()), n), "top5": (float(hit.any(-1).sum()), n)}


def _cached_arrays(cache: Path, build: Any) -> dict[str, np.ndarray]:
    key = str(cache)
    if key in _MEMO:
        return _MEMO[key]
    arrays = _load_npz(cache)
    if arrays is None:
        arrays = build()
        _save_npz(cache, **arrays)
    _MEMO[key] = arrays
    return arrays
