"""``image_classification``: CIFAR-10, MNIST-1D, an ImageFolder tree or a Hugging Face image
dataset (sources in :mod:`pairgraph.tasks.image_sources`), with fixed train/val/test subsets,
optional augmentation (crop and flip, or RandomResizedCrop and flip) and per-channel normalization. Metrics ``top1`` and, with more than
5 classes, ``top5``. Grayscale images stay one channel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator, model_validator
from torch import Tensor
from torch.utils.data import Dataset

from pairgraph.config.names import TASKS
from pairgraph.errors import PairgraphError
from pairgraph.paths import data_root
from pairgraph.tasks import image_sources
from pairgraph.tasks.base import LOSS_DESCRIPTION, LossKind, OptionsBase, Task, class_loss, predicted_class
from pairgraph.tasks.image_sources import CIFAR10_MEAN, CIFAR10_STD

_SPLIT_SEED = 0  # real-data subsets (val carve, train/test subsets) do not depend on the run seed


class ImageClassificationOptions(OptionsBase):
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
    augment: Literal["none", "crop_flip", "random_resized_crop"] = Field(
        default="none",
        description="Training augmentation, seen alike by guide and target (it is applied to the batch both get): "
        "none; crop_flip (random crop with padding 4, horizontal flip; true means this); random_resized_crop "
        "(torchvision's RandomResizedCrop to the image size with augment_scale, then a horizontal flip: the "
        "authors' image protocol). Example: augment: random_resized_crop.",
    )
    augment_scale: tuple[float, float] = Field(
        default=(0.08, 1.0), description="random_resized_crop: the range of the crop's area, as a fraction of the "
        "image (torchvision's default). Example: augment_scale: [0.35, 1.0].")
    normalize: bool = Field(
        default=True,
        description="Normalize with per-channel mean/std (CIFAR-10's standard values; else the training set's).",
    )
    image_size: tuple[int, int] | None = Field(
        default=None, description="Resize images to (H, W): folder:/hf: images when decoded, CIFAR-10 and MNIST-1D "
        "per example (bilinear, antialiased); None keeps the dataset's size (folder:/hf: images must share one)."
    )
    num_classes: int | None = Field(
        default=None, ge=1,
        description="Classes of a folder:/hf: dataset; with image_size set, compiling needs no data on disk "
        "(then RGB images are assumed; a folder on disk says itself whether it is grayscale).",
    )
    loss: LossKind = Field(default="ce", description=LOSS_DESCRIPTION)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        if v in ("cifar10", "mnist1d") or (v.startswith(("folder:", "hf:")) and len(v.split(":", 1)[1]) > 0):
            return v
        raise ValueError(f"unknown dataset {v!r}: use 'cifar10', 'mnist1d', 'folder:<path>' or 'hf:<name>'")

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_flag(cls, v: Any) -> Any:
        return {False: "none", True: "crop_flip"}.get(v, v) if isinstance(v, bool) or v is None else v

    @model_validator(mode="after")
    def _positive_size(self) -> ImageClassificationOptions:
        if self.image_size is not None and min(self.image_size) < 1:
            raise ValueError("image_size must be positive")
        return self


def _crop_flip(x: Tensor, hflip: bool) -> Tensor:
    """A random crop of the image padded by 4 (not along a size-1 axis), then a horizontal flip half the time."""
    h, w = x.shape[-2:]
    ph, pw = (4 if h > 1 else 0), (4 if w > 1 else 0)
    xp = F.pad(x, (pw, pw, ph, ph))
    top = int(torch.randint(0, 2 * ph + 1, ()))
    left = int(torch.randint(0, 2 * pw + 1, ()))
    x = xp[:, top : top + h, left : left + w]
    return x.flip(-1) if hflip and bool(torch.rand(()) < 0.5) else x


def _random_resized_crop(x: Tensor, size: tuple[int, int], scale: tuple[float, float], hflip: bool) -> Tensor:
    """torchvision's RandomResizedCrop (area fraction in ``scale``, aspect ratio 3/4–4/3) resized to ``size``
    (bilinear, antialiased), then a horizontal flip half the time."""
    from torchvision.transforms import v2

    top, left, h, w = v2.RandomResizedCrop.get_params(x, list(scale), [3 / 4, 4 / 3])
    x = v2.functional.resized_crop(x, top, left, h, w, list(size), antialias=True)
    return x.flip(-1) if hflip and bool(torch.rand(()) < 0.5) else x


class _ImageDataset(Dataset):
    """Rows ``idx`` of an (N, C, H, W) uint8 or float array, converted/augmented/normalized per item."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        idx: np.ndarray,
        mean: Tensor | None,
        std: Tensor | None,
        augment: str,
        hflip: bool,
        size: tuple[int, int] | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
    ):
        self.images, self.labels = images, labels
        self.size = size if size is not None and tuple(size) != tuple(images.shape[-2:]) else None
        self.idx = torch.as_tensor(idx, dtype=torch.long)
        self.mean, self.std = mean, std
        self.augment, self.hflip, self.scale = augment, hflip, tuple(scale)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        j = int(self.idx[i])
        x = self.images[j]
        x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32, copy=True)
        if self.augment == "crop_flip":
            x = _crop_flip(x, self.hflip)
        elif self.augment == "random_resized_crop":
            x = _random_resized_crop(x, self.size or tuple(x.shape[-2:]), self.scale, self.hflip)
        if self.size is not None and self.augment != "random_resized_crop":  # task.image_size, another stored size
            x = F.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x.contiguous(), self.labels[j]


def _channel_stats(train_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (0 → 1) of the full training set, in [0, 1] units for uint8 images."""
    xs = train_x.astype(np.float64)
    if train_x.dtype == np.uint8:
        xs /= 255.0
    m, s = xs.mean(axis=(0, 2, 3)), xs.std(axis=(0, 2, 3))
    return m, np.where(s > 0, s, 1.0)


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
            info = self._compute_shape_info()
            if info[0] < 2:  # one class: loss 0 from the start, nothing to learn
                raise PairgraphError(f"task dataset {self.options.dataset} has {info[0]} class(es); a classifier "
                                     "needs at least 2", "give train/ (and test/) one folder per class, 2 or more")
            self._shape_memo = info
        return info

    def _compute_shape_info(self) -> tuple[int, int, tuple[int, int]]:
        o, ds = self.options, self.options.dataset
        if ds == "cifar10":
            n, c, hw = 10, 3, (32, 32)
        elif ds == "mnist1d":
            n, c, hw = 10, 1, (1, 40)
        elif o.num_classes is not None and o.image_size is not None and not self._folder_on_disk():
            return o.num_classes, 3, tuple(o.image_size)  # type: ignore[return-value]  # no data: RGB is assumed
        elif ds.startswith("folder:"):
            n, c, hw = self._folder_shape_info()
        else:
            arrays = self._arrays()
            c, h, w = arrays["train_x"].shape[1:]
            n, c, hw = len(arrays["classes"]), int(c), (int(h), int(w))
        if o.num_classes is not None and o.num_classes != n:
            raise PairgraphError(f"task.num_classes is {o.num_classes} but {ds} has {n} classes",
                                 f"set task.num_classes: {n} or leave it out")
        return n, c, tuple(o.image_size) if o.image_size is not None else hw  # type: ignore[return-value]

    def _folder_on_disk(self) -> bool:
        """A folder: dataset whose train/ folder exists (its images then say how many channels)."""
        if not self.options.dataset.startswith("folder:"):
            return False
        try:
            self._folder_root()
        except PairgraphError:
            return False
        return True

    def _folder_shape_info(self) -> tuple[int, int, tuple[int, int]]:
        """Classes from the train/ subfolders; the size from task.image_size, else the first image."""
        root = self._folder_root()
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        channels = 1 if image_sources.folder_mode(root) == "L" else 3
        if self.options.image_size is not None:
            return len(classes), channels, tuple(self.options.image_size)  # type: ignore[return-value]
        first = next((f for c in classes for f in sorted((root / "train" / c).iterdir()) if f.is_file()), None)
        im = image_sources.open_image(first)
        return len(classes), channels, (im.height, im.width)

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

    def pixel_normalization(self) -> tuple[list[float], list[float]]:
        c = self._shape_info()[1]
        if not self.options.normalize:
            return [0.0] * c, [1.0] * c
        if self.options.dataset == "cifar10":
            return list(CIFAR10_MEAN), list(CIFAR10_STD)
        m, s = _channel_stats(self._arrays()["train_x"])
        return [float(v) for v in m], [float(v) for v in s]

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
            return image_sources.cifar10_arrays(data_root(self.options.data_dir))
        if ds == "mnist1d":
            return image_sources.mnist1d_arrays()
        if ds.startswith("folder:"):
            return image_sources.folder_arrays(self._folder_root(), self.options.image_size)
        return image_sources.hf_image_arrays(ds, self.options.image_size)

    def _split_indices(self, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted (train, val, test) rows: val carved from train, fixed subsets (``_SPLIT_SEED``)."""
        o = self.options
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
        return train_idx, val_idx, test_idx

    def _normalization(self, train_x: np.ndarray) -> tuple[Tensor | None, Tensor | None]:
        """(mean, std) as (C, 1, 1) tensors: CIFAR-10's standard values, else the training set's; None when off."""
        if not self.options.normalize:
            return None, None
        if self.options.dataset == "cifar10":
            m, s = np.array(CIFAR10_MEAN), np.array(CIFAR10_STD)
        else:  # per-channel statistics of the full training set
            m, s = _channel_stats(train_x)
        return torch.tensor(m, dtype=torch.float32)[:, None, None], torch.tensor(s, dtype=torch.float32)[:, None, None]

    def datasets(self, seed: int) -> dict[str, Dataset]:
        """Train/val/test splits. Subsets are fixed (independent of ``seed``) so runs compare on the same data."""
        o = self.options
        a = self._arrays()
        train_x, train_y = torch.from_numpy(a["train_x"]), torch.from_numpy(a["train_y"])
        test_x, test_y = torch.from_numpy(a["test_x"]), torch.from_numpy(a["test_y"])
        train_idx, val_idx, test_idx = self._split_indices(len(train_y), len(test_y))
        mean, std = self._normalization(a["train_x"])
        hflip = o.dataset != "mnist1d"  # flipping a 1-D signal is not a label-preserving transform
        size = self._shape_info()[2]
        return {
            "train": _ImageDataset(train_x, train_y, train_idx, mean, std, o.augment, hflip, size, o.augment_scale),
            "val": _ImageDataset(train_x, train_y, val_idx, mean, std, "none", hflip, size),
            "test": _ImageDataset(test_x, test_y, test_idx, mean, std, "none", hflip, size),
        }

    # -- loss and metrics -----------------------------------------------------------------------
    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        self._check_outputs(logits, self.num_classes)
        return class_loss(logits.reshape(-1, logits.shape[-1]), y.reshape(-1).long(), self.options.loss)

    @torch.no_grad()
    def metrics(self, logits: Tensor, y: Tensor) -> dict[str, tuple[float, int]]:
        """``top1``, and ``top5`` when there are more than 5 classes (else it is always 1), as (correct, count)."""
        logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
        n = int(y.numel())
        out = {"top1": (float((predicted_class(logits) == y).sum()), n)}
        if logits.shape[-1] > 5:
            out["top5"] = (float((logits.topk(5, dim=-1).indices == y[:, None]).any(-1).sum()), n)
        return out
