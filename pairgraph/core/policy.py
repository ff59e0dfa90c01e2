"""The tracing policy (like timm's ``layers/_fx.py``): which modules torch.fx keeps whole, which
become tap points by default, and how a module's output is read as an activation.

Both are registries keyed by the module's qualified class name, so a type can be registered
without importing its library (torchvision's ViT ``EncoderBlock`` is registered by name).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pairgraph.registry import Registry


def _batch_axis_0(m: nn.Module) -> int:
    return 0


@dataclass(frozen=True)
class TapRule:
    """How to read a module's output as an activation: tuple element and batch axis; ``default``:
    tapped when a spec's ``layers.types`` is not set."""

    output_index: int | None = None
    batch_axis: Callable[[nn.Module], int] = _batch_axis_0
    default: bool = True


#: qualified class name → :class:`TapRule`
TAP_TYPES: Registry[TapRule] = Registry("tap type")
#: qualified class names torch.fx must not trace into
LEAF_MODULES: Registry[bool] = Registry("leaf module")


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_tap_type(
    cls: type | str, *, output_index: int | None = None, batch_axis: Callable[[nn.Module], int] | None = None,
    default: bool = True,
) -> type | str:
    """Declare how ``cls`` outputs are tapped (a class, or its qualified name); ``default`` adds it to
    the default tap types."""
    key = cls if isinstance(cls, str) else qualname(cls)
    TAP_TYPES.register(key)(TapRule(output_index, batch_axis or _batch_axis_0, default))
    return cls


def register_leaf_module(cls: type | str) -> type | str:
    """Keep torch.fx from tracing into ``cls`` (it becomes one node, and can be a tap point)."""
    LEAF_MODULES.register(cls if isinstance(cls, str) else qualname(cls))(True)
    return cls


def rule_for(module: nn.Module) -> TapRule:
    """The rule of the nearest registered class in ``module``'s MRO (a plain rule when none)."""
    for cls in type(module).__mro__:
        if qualname(cls) in TAP_TYPES:
            return TAP_TYPES.get(qualname(cls))
    return TapRule(default=False)


def is_default_tap(module: nn.Module) -> bool:
    """A module of a default tap type (or a subclass of one)."""
    return any(qualname(c) in TAP_TYPES and TAP_TYPES.get(qualname(c)).default for c in type(module).__mro__)


def default_tap_types() -> set[str]:
    """Short class names of the default tap types (what ``layers.types: null`` selects)."""
    return {name.rsplit(".", 1)[-1] for name, rule in TAP_TYPES.items() if rule.default}


def is_leaf(module: nn.Module, extra: frozenset[str] = frozenset()) -> bool:
    """A module fx keeps whole: a registered leaf, a tap type (or a subclass of one, e.g. timm's
    ``LayerNorm``), or a class named in ``extra`` (short or qualified name: a spec's ``layers.leaf_types``)."""
    return any(qualname(c) in LEAF_MODULES or qualname(c) in TAP_TYPES or c.__name__ in extra or qualname(c) in extra
               for c in type(module).__mro__[:-1])


def head_names(model: nn.Module) -> tuple[str, ...]:
    """Qualified names of the modules that make up ``model``'s output head, as its library declares them:
    timm's ``pretrained_cfg['classifier']`` with the module holding it (``fc``; ``head`` for ``head.fc``, with
    its norm and pooling; LeViT's two heads), and for a transformers model every child beside its base model
    (``lm_head``, ``classifier``). Empty for other models: their head is found from the data flow (the tap
    whose output reaches the logits through parameter-free steps)."""
    names: list[str] = []
    cfg = getattr(model, "pretrained_cfg", None)
    classifier = cfg.get("classifier") if isinstance(cfg, dict) else None
    if classifier:
        names += [str(c).split(".", 1)[0] for c in ([classifier] if isinstance(classifier, str) else classifier)]
    prefix = getattr(model, "base_model_prefix", None)
    base = getattr(model, prefix, None) if isinstance(prefix, str) and prefix else None
    if isinstance(base, nn.Module) and base is not model:
        names += [n for n, _ in model.named_children() if n != prefix]
    return tuple(names)


def in_head(name: str, heads: tuple[str, ...]) -> bool:
    module = name.split("@", 1)[0]
    return any(module == h or module.startswith(h + ".") for h in heads)


def block_types(model: nn.Module) -> frozenset[str]:
    """The class names a transformers model declares as its blocks (``_no_split_modules``: what it never
    splits across devices, e.g. ``LlamaDecoderLayer``), or else the classes of the repeated layers in its
    ModuleLists (``RobertaLayer``): tapped whole, like the registered blocks. Empty for other models."""
    if not isinstance(getattr(model, "base_model_prefix", None), str) or not hasattr(model, "_no_split_modules"):
        return frozenset()
    declared = getattr(model, "_no_split_modules", None)
    if declared:
        return frozenset(str(c) for c in declared)
    return frozenset(type(m).__name__ for lst in model.modules() if isinstance(lst, nn.ModuleList)
                     for m in lst if not type(m).__module__.startswith("torch."))


def _batch_first_axis(m: nn.Module) -> int:
    return 0 if getattr(m, "batch_first", False) else 1


def _attention_batch_axis(m: nn.Module) -> int:
    return _batch_first_axis(m.self_attn)


for _cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
             nn.LayerNorm, nn.GroupNorm):
    register_tap_type(_cls)
for _cls in (nn.RNN, nn.LSTM, nn.GRU, nn.MultiheadAttention):
    register_tap_type(_cls, output_index=0, batch_axis=_batch_first_axis)
for _cls in (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer):
    register_tap_type(_cls, batch_axis=_attention_batch_axis)
for _cls in (nn.Embedding, nn.ConvTranspose2d, nn.InstanceNorm2d):
    register_tap_type(_cls, default=False)
# transformer and ConvNeXt blocks of torchvision, timm and transformers: whole blocks are the layers a
# person would map (a block returning a tuple is tapped at its first element, the hidden states)
for _name in ("torchvision.models.vision_transformer.EncoderBlock", "timm.models.vision_transformer.Block",
              "timm.models.convnext.ConvNeXtBlock", "timm.models.swin_transformer.SwinTransformerBlock",
              "transformers.models.gpt2.modeling_gpt2.GPT2Block", "transformers.models.bert.modeling_bert.BertLayer",
              "transformers.models.vit.modeling_vit.ViTLayer", "transformers.models.llama.modeling_llama.LlamaDecoderLayer"):
    register_tap_type(_name)
    register_leaf_module(_name)
