"""The image sources of ``image_classification``, each decoded once into arrays and cached.

Every source gives the same dict: ``train_x``/``test_x`` (N, C, H, W) uint8 (float32 for
MNIST-1D), ``train_y``/``test_y`` int64 class ids and ``classes`` (names in id order), cached
as ``.npz`` under ``cache_dir()`` (see :mod:`pairgraph.tasks.cache`):

- CIFAR-10 from the offline JPEG archive (``cifar10-jpeg/{train,test}/<class>/*.jpg`` in a tar.xz);
- MNIST-1D, generated procedurally by the ``mnist1d`` package (never downloaded), as 1×1×40 images;
- an ImageFolder tree (``train/<class>/``, ``test/<class>/``);
- a Hugging Face image dataset with an image and a label column.
"""

from __future__ import annotations

import io
import json
import lzma
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from pairgraph.errors import PairgraphError, one_line
from pairgraph.paths import cache_dir
from pairgraph.tasks import hf
from pairgraph.tasks.base import DATA_HINT
from pairgraph.tasks.cache import CACHE_VERSION, cached_arrays, digest, file_signature

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_ARCHIVE = "cifar10-jpeg.tar.xz"

_Item = tuple[str, str, np.ndarray]  # (class folder, file name, HWC uint8 image)


# ----------------------------------------------------------------------------------------------
# CIFAR-10 archive
# ----------------------------------------------------------------------------------------------


def cifar10_arrays(data: Path) -> dict[str, np.ndarray]:
    """CIFAR-10 from ``<data>/cifar10-jpeg.tar.xz``, decoded on first use and cached."""
    archive = data / CIFAR10_ARCHIVE
    if not archive.is_file():
        raise PairgraphError(f"CIFAR-10 archive not found at {archive}", DATA_HINT)
    cache = cache_dir() / "cifar10" / f"cifar10-{digest(file_signature(archive), CACHE_VERSION)}.npz"
    return cached_arrays(cache, lambda: decode_cifar_archive(archive))


def _archive_images(archive: Path) -> dict[str, list[_Item]]:
    """Split → (class, file, RGB image) of every ``.../{train,test}/<class>/<image>`` in the tar; a
    truncated or damaged archive is a one-line error naming it."""
    try:
        return _read_archive(archive)
    except (EOFError, tarfile.TarError, lzma.LZMAError, zlib.error, OSError) as e:
        raise PairgraphError(f"cannot read the archive {archive}: {one_line(e)}",
                             "it is truncated or damaged: download it again (see shared/data/README.md)") from None


def _read_archive(archive: Path) -> dict[str, list[_Item]]:
    found: dict[str, list[_Item]] = {"train": [], "test": []}
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
    return found


def decode_cifar_archive(archive: Path) -> dict[str, np.ndarray]:
    """Decode ``cifar10-jpeg/{train,test}/<class>/*.jpg`` from the tar.xz into NCHW uint8 arrays."""
    found = _archive_images(archive)
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


# ----------------------------------------------------------------------------------------------
# MNIST-1D
# ----------------------------------------------------------------------------------------------


def mnist1d_arrays() -> dict[str, np.ndarray]:
    """MNIST-1D with the package's default arguments, as (N, 1, 1, 40) float32 images."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise PairgraphError("MNIST-1D needs the mnist1d package", "pip install mnist1d") from None
    args = get_dataset_args()
    sig = json.dumps({k: v for k, v in sorted(vars(args).items()) if k != "url"}, default=str)
    cache = cache_dir() / "mnist1d" / f"mnist1d-{digest(sig, CACHE_VERSION)}.npz"

    def build() -> dict[str, np.ndarray]:
        d = make_dataset(args)  # procedural; never get_dataset (it downloads)
        return {
            "train_x": np.asarray(d["x"], dtype=np.float32)[:, None, None, :],
            "train_y": np.asarray(d["y"], dtype=np.int64),
            "test_x": np.asarray(d["x_test"], dtype=np.float32)[:, None, None, :],
            "test_y": np.asarray(d["y_test"], dtype=np.int64),
            "classes": np.array([str(i) for i in range(10)]),
        }

    return cached_arrays(cache, build)


# ----------------------------------------------------------------------------------------------
# PIL images: ImageFolder trees and Hugging Face datasets
# ----------------------------------------------------------------------------------------------


def decode_pil_images(images: list[Any], size: tuple[int, int] | None, mode: str, what: str) -> np.ndarray:
    """PIL images → (N, C, H, W) uint8 (resized to ``size`` = (H, W) when given)."""
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


#: PIL modes read as one grayscale channel; everything else is read as RGB
GRAYSCALE_MODES = ("1", "L", "I", "I;16", "F")


def pil_mode(image: Any) -> str:
    """``L`` (one channel) for a grayscale PIL image, else ``RGB``."""
    return "L" if image.mode in GRAYSCALE_MODES else "RGB"


def folder_mode(root: Path) -> str:
    """The mode of an ImageFolder tree: its first training image's (grayscale folders stay one channel)."""
    first = next((f for c in sorted(p for p in (root / "train").iterdir() if p.is_dir())
                  for f in sorted(c.iterdir()) if f.is_file()), None)
    if first is None:
        raise PairgraphError(f"no images under {root / 'train'}", "put images in train/<class>/")
    return pil_mode(open_image(first))


def open_image(path: Path) -> Any:
    """A decoded PIL image; an unreadable or truncated file is one line naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for broken files
        raise PairgraphError(f"cannot read image {path}: {one_line(e)}", "remove or replace that file") from None


def folder_arrays(root: Path, size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """The ImageFolder tree ``root/{train,test}/<class>/`` as arrays (resized to ``size``), one channel
    when its images are grayscale, else RGB."""
    from torchvision.datasets import ImageFolder  # torchvision takes seconds to import

    train, test = ImageFolder(str(root / "train")), ImageFolder(str(root / "test"))
    mode = folder_mode(root)
    sig = "|".join(
        f"{p}:{Path(p).stat().st_size}:{Path(p).stat().st_mtime_ns}" for p, _ in train.samples + test.samples
    )
    key = (root.resolve(), sig, size, CACHE_VERSION) + (() if mode == "RGB" else (mode,))  # RGB keys unchanged
    cache = cache_dir() / "folder" / f"{root.name}-{digest(*key)}.npz"

    def build() -> dict[str, np.ndarray]:
        index = train.class_to_idx
        missing = set(test.classes) - set(index)
        if missing:
            raise PairgraphError(f"{root / 'test'} has classes {sorted(missing)} not in train/", None)
        out: dict[str, np.ndarray] = {"classes": np.array(train.classes)}
        for split, folder in (("train", train), ("test", test)):
            ims = [open_image(Path(p)) for p, _ in folder.samples]  # not folder.loader: it makes every image RGB
            out[f"{split}_x"] = decode_pil_images(ims, size, mode, str(root / split))
            out[f"{split}_y"] = np.array([index[folder.classes[t]] for _, t in folder.samples], dtype=np.int64)
        return out

    return cached_arrays(cache, build)


def hf_image_arrays(source: str, size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """The Hugging Face image dataset ``source`` (``hf:<name>[:<config>]``), resized to ``size``."""
    name, _ = hf.parse_source(source)
    cache = cache_dir() / "hf-images" / f"{name.replace('/', '_')}-{digest(source, size, CACHE_VERSION)}.npz"
    return cached_arrays(cache, lambda: _decode_hf_images(source, size))


def _hf_splits(dd: Any, source: str) -> tuple[str, str]:
    """(train split, test split) of the DatasetDict; the test split may be its validation split."""
    train_split = "train" if "train" in dd else None
    test_split = next((s for s in ("test", "validation", "valid", "val") if s in dd), None)
    if train_split is None or test_split is None:
        raise PairgraphError(f"{source} needs a train and a test split (has {list(dd)})", None)
    return train_split, test_split


def _hf_columns(feats: Any, source: str) -> tuple[str, str]:
    """(image column, label column): the first Image and ClassLabel features, else a label-like name."""
    import datasets

    img_col = next((c for c, f in feats.items() if isinstance(f, datasets.Image)), None)
    lab_col = next((c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)), None)
    lab_col = lab_col or next((c for c in ("label", "labels", "fine_label") if c in feats), None)
    if img_col is None or lab_col is None:
        raise PairgraphError(
            f"{source} has no image/label columns (columns {list(feats)})",
            "use an image classification dataset",
        )
    return img_col, lab_col


def _label_ids(labels: list[Any], classes: list[str], where: str) -> list[int]:
    """Ids of raw (not ClassLabel) ``labels`` in ``classes``, matched as strings."""
    index = {str(c): i for i, c in enumerate(classes)}
    unknown = {str(v) for v in labels} - set(index)
    if unknown:
        raise PairgraphError(f"{where} has labels {sorted(unknown)[:5]} not in train", None)
    return [index[str(v)] for v in labels]


def _decode_hf_images(source: str, size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    import datasets

    dd = hf.load(source)
    train_split, test_split = _hf_splits(dd, source)
    feats = dd[train_split].features
    img_col, lab_col = _hf_columns(feats, source)
    first = dd[train_split][0][img_col]
    mode = pil_mode(first)
    is_class_label = isinstance(feats[lab_col], datasets.ClassLabel)
    if is_class_label:
        classes = list(feats[lab_col].names)
    else:
        classes = [str(c) for c in sorted(set(dd[train_split][lab_col]))]
    out: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for ours, split in (("train", train_split), ("test", test_split)):
        d = dd[split]
        out[f"{ours}_x"] = decode_pil_images(list(d[img_col]), size, mode, f"{source}[{split}]")
        labels = d[lab_col] if is_class_label else _label_ids(d[lab_col], classes, f"{source}[{split}]")
        out[f"{ours}_y"] = np.asarray(labels, dtype=np.int64)
    return out
