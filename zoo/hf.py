"""``hf:<model_type>``: a Hugging Face transformers model built from its config, untrained.

``AutoConfig.for_model(model_type, **args)`` with the task's sizes filled in where the user did not
set them (``vocab_size``, positions ≥ the task's length, ``num_labels``, ``image_size``,
``num_channels``), and the head chosen from the task: a token task whose classes are its vocabulary
(copy-paste, language modeling) gets a causal-LM head, another token task (parity) a
sequence-classification head, an image task an image-classification head. The model's class is
subclassed so that ``forward(x)`` takes the task's one tensor (``input_ids`` with the attention mask
derived from ``pad_id``, or ``pixel_values``) and returns the logits tensor; module names and state
dict keys stay the transformers ones. ``guide.weights: pretrained`` with ``args.hf_name`` (a hub name,
or a folder written by ``save_pretrained``) loads weights with ``from_pretrained`` instead; the model then
keeps the checkpoint's own sizes (the hub needs internet; a local folder does not). Encoder–decoders
(``hf:t5``, ``hf:bart``: ``config.is_encoder_decoder``) are refused in one line that says to use the
encoder alone: pairgraph feeds a network one input and taps one stack.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from torch import Tensor, nn

from pairgraph.config.names import MODEL_SOURCES
from pairgraph.errors import PairgraphError, one_line
from pairgraph.zoo import ModelEntry

_POSITIONS = ("n_positions", "max_position_embeddings")


def _transformers(ref: str) -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise PairgraphError(f"model {ref!r} needs transformers, which is not installed",
                             "pip install 'pairgraph[hf]' (or pip install transformers)") from None


def _head(tf: Any, kwargs: dict[str, Any]) -> tuple[Any, str]:
    """(Auto class, input name) the task calls for."""
    if "image_size" in kwargs or "in_channels" in kwargs:
        return tf.AutoModelForImageClassification, "pixel_values"
    if kwargs.get("num_classes") not in (None, kwargs.get("vocab_size")):
        return tf.AutoModelForSequenceClassification, "input_ids"
    return tf.AutoModelForCausalLM, "input_ids"


def _fill(config: Any, user: set[str], kwargs: dict[str, Any]) -> None:
    """The task's sizes into the config, where the user did not set them."""
    def put(key: str, value: Any) -> None:
        if value is not None and key not in user and hasattr(config, key):
            setattr(config, key, value)

    put("vocab_size", kwargs.get("vocab_size"))
    put("pad_token_id", kwargs.get("pad_id"))
    for key in _POSITIONS:
        if kwargs.get("max_len") and key not in user and getattr(config, key, None) is not None:
            setattr(config, key, max(int(getattr(config, key)), int(kwargs["max_len"])))
    if "image_size" in kwargs:
        size = kwargs["image_size"]
        put("image_size", size[0] if isinstance(size, list | tuple) else size)
    put("num_channels", kwargs.get("in_channels"))
    if kwargs.get("num_classes") is not None and "num_labels" not in user:
        config.num_labels = int(kwargs["num_classes"])


@functools.cache
def _logits_class(cls: type, input_name: str) -> type:
    """``cls`` whose forward takes the task's one tensor and returns the logits tensor."""

    def forward(self: nn.Module, x: Tensor) -> Tensor:
        if input_name == "pixel_values":
            return cls.forward(self, pixel_values=x).logits
        pad = getattr(self.config, "pad_token_id", None)
        mask = (x != pad).long() if pad is not None else None
        return cls.forward(self, input_ids=x, attention_mask=mask).logits

    return type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


@MODEL_SOURCES.register("hf")
def hf_source(ref: str) -> ModelEntry:
    """``hf:<model_type>`` (``hf:gpt2``, ``hf:bert``, ``hf:vit`` …), built from ``AutoConfig.for_model``."""
    tf = _transformers(ref)
    model_type = ref.split(":", 1)[1]
    try:
        default_config = tf.AutoConfig.for_model(model_type)
    except ValueError:
        raise PairgraphError(f"unknown transformers model type {model_type!r}",
                             "use a model_type such as gpt2, bert, vit, llama (transformers' CONFIG_MAPPING)") from None
    if getattr(default_config, "is_encoder_decoder", False):
        raise PairgraphError(f"{ref!r} is an encoder–decoder; pairgraph does not support encoder–decoders (it feeds "
                             "a network one input and taps one stack)",
                             "use the encoder alone: an encoder-only type (hf:bert, hf:roberta) or a decoder-only one "
                             "(hf:gpt2, hf:llama), or a factory of yours returning the encoder with a head "
                             "(e.g. transformers' T5EncoderModel)")

    def hf_factory(**kwargs: Any) -> nn.Module:
        task = {k: kwargs.pop(k) for k in ("vocab_size", "num_classes", "pad_id", "max_len", "image_size",
                                           "in_channels") if k in kwargs}
        pretrained = kwargs.pop("pretrained", None)
        kwargs.pop("hf_name", None)  # only read with weights: pretrained
        auto, input_name = _head(tf, task)
        try:
            if pretrained:
                model = auto.from_pretrained(pretrained, **kwargs)
            else:
                config = tf.AutoConfig.for_model(model_type, **kwargs)
                _fill(config, set(kwargs), task)
                if getattr(config, "architectures", None) is None:  # transformers' Auto* iterates it for model
                    config.architectures = []                       # types with several classes (DeiT)
                model = auto.from_config(config)
        except (ValueError, OSError, TypeError) as e:
            raise PairgraphError(f"transformers could not build {ref!r}: {one_line(e)}",
                                 "check the args against the model's config class") from None
        model.__class__ = _logits_class(type(model), input_name)
        return model

    return ModelEntry(ref, hf_factory, "tokens", {}, f"transformers {model_type}",
                      default_keys={"vocab_size", "num_classes", "pad_id", "max_len", "image_size", "in_channels"},
                      pretrained=_pretrained_args, starter_args=lambda: _small_args(default_config))


#: a CPU-sized transformer, in transformers' standard config names (each config maps them to its own)
_SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}


def _small_args(config: Any) -> dict[str, Any]:
    """The config arguments of a small model of this type, in the names its config takes (gpt2: n_layer, …)."""
    names = getattr(config, "attribute_map", None) or {}
    out = {}
    for standard, value in _SMALL.items():
        key = names.get(standard, standard)
        if isinstance(getattr(config, key, None), int):
            out[key] = value
    return out


def _pretrained_args(args: dict[str, Any]) -> dict[str, Any]:
    """``weights: pretrained`` → ``from_pretrained(args.hf_name)`` (a hub name, or a local folder offline)."""
    args = dict(args)
    name = args.pop("hf_name", None)
    if not name:
        raise PairgraphError("weights: pretrained for an hf: model needs the checkpoint's name",
                             "add args.hf_name: a hub name such as gpt2, or a folder written by save_pretrained")
    return {**args, "pretrained": name}
