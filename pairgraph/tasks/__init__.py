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

Modules
-------
:mod:`~pairgraph.tasks.base` (``Task``, ``get_task``, losses, :func:`predicted_class`),
:mod:`~pairgraph.tasks.cache` (the ``.npz`` array cache), :mod:`~pairgraph.tasks.hf` (Hugging Face
``datasets`` access), :mod:`~pairgraph.tasks.tokens` (``copy_paste``, ``parity``),
:mod:`~pairgraph.tasks.language` (``language_modeling``), :mod:`~pairgraph.tasks.images` and
:mod:`~pairgraph.tasks.image_sources` (``image_classification``). Importing this package imports
every family, so their ``@TASKS.register`` decorators run.
"""

from __future__ import annotations

from pairgraph.config.names import TASKS
from pairgraph.paths import cache_dir, data_root
from pairgraph.tasks.base import IGNORE_INDEX, LossKind, OptionsBase, Task, get_task, predicted_class
from pairgraph.tasks.cache import MEMO as _MEMO  # noqa: F401  (the in-process memo; tests clear it)
from pairgraph.tasks.image_sources import CIFAR10_ARCHIVE, CIFAR10_MEAN, CIFAR10_STD
from pairgraph.tasks.images import ImageClassificationOptions, ImageClassificationTask
from pairgraph.tasks.language import LanguageModelingOptions, LanguageModelingTask, gpt2_encoding
from pairgraph.tasks.tokens import CopyPasteOptions, CopyPasteTask, ParityOptions, ParityTask, TokenTask

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IGNORE_INDEX",
    "TASKS",
    "CopyPasteOptions",
    "CopyPasteTask",
    "ImageClassificationOptions",
    "ImageClassificationTask",
    "LanguageModelingOptions",
    "LanguageModelingTask",
    "LossKind",
    "OptionsBase",
    "ParityOptions",
    "ParityTask",
    "Task",
    "TokenTask",
    "cache_dir",
    "data_root",
    "get_task",
    "gpt2_encoding",
    "predicted_class",
]
