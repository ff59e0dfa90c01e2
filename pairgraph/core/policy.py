"""The tracing policy (like timm's ``layers/_fx.py``): which modules torch.fx keeps whole, which
become tap points by default, and how a module's output is read as an activation.

Both are registries keyed by the module's qualified class name, so a type can be registered
without importing its library (torchvision's ViT ``EncoderBlock`` is registered by name). Types match
by class, subclasses included (:func:`class_names`): timm's ``ScaledStdConv2d`` is a ``Conv2d`` tap.
"""

from __future__ import annotations

import re
from collections import Counter
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


def class_names(module: nn.Module) -> frozenset[str]:
    """The short and qualified names of every class ``module`` is an instance of (below ``nn.Module``): what a
    spec's ``layers.types`` entry matches, so a subclass matches its base (``Conv2d`` selects ``ScaledStdConv2d``)
    and a dotted path names a user's own class exactly."""
    classes = type(module).__mro__[: type(module).__mro__.index(nn.Module)] if isinstance(module, nn.Module) else ()
    return frozenset(n for c in classes for n in (c.__name__, qualname(c)))


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
    (``lm_head``, ``classifier``) and its pooler; for any model, its auxiliary classifiers (``aux1``,
    ``AuxLogits``). Otherwise the head is found from the data flow (the tap whose output reaches the logits
    through parameter-free steps)."""
    names: list[str] = []
    cfg = getattr(model, "pretrained_cfg", None)
    classifier = cfg.get("classifier") if isinstance(cfg, dict) else None
    if classifier:
        names += [str(c).split(".", 1)[0] for c in ([classifier] if isinstance(classifier, str) else classifier)]
    prefix = getattr(model, "base_model_prefix", None)
    base = getattr(model, prefix, None) if isinstance(prefix, str) and prefix else None
    if isinstance(base, nn.Module) and base is not model:
        names += [n for n, _ in model.named_children() if n != prefix]
    if isinstance(prefix, str):  # a transformers base model's pooler (BERT, ALBERT, BEiT) feeds only a head
        names += [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] == "pooler"]
    names += [n for n, _ in model.named_modules() if _AUX.match(n.rsplit(".", 1)[-1])]  # GoogLeNet's aux1, AuxLogits
    return tuple(names)


#: auxiliary classifiers (torchvision's GoogLeNet ``aux1``/``aux2``, Inception's ``AuxLogits``, ``aux_head``)
_AUX = re.compile(r"aux(iliary)?(_?logits|_?head|_?classifier|\d+)?$", re.IGNORECASE)


def in_head(name: str, heads: tuple[str, ...]) -> bool:
    module = name.split("@", 1)[0]
    return any(module == h or module.startswith(h + ".") for h in heads)


def block_types(model: nn.Module) -> frozenset[str]:
    """The classes a model's blocks are, tapped whole: a transformers model's ``_no_split_modules`` (what it never
    splits across devices, e.g. ``LlamaDecoderLayer``) or else the classes of the layers with attention in its
    ModuleLists (``RobertaLayer``, ``AlbertLayer``); for any other model (timm, torchvision, a user's), the repeated
    classes of its Sequential/ModuleList stages that hold an attention (CoaT's ``SerialBlock``, MaxViT's
    ``MaxxVitBlock``, torchvision's ``SwinTransformerBlock``). Empty for a model without such blocks."""
    if not isinstance(getattr(model, "base_model_prefix", None), str) or not hasattr(model, "_no_split_modules"):
        return frozenset(qualname(type(m)) for m in _innermost(_repeated(model, (nn.ModuleList, nn.Sequential))))
    declared = getattr(model, "_no_split_modules", None)
    if declared:
        return frozenset(str(c) for c in declared)
    return frozenset(type(m).__name__ for m in _innermost(_repeated(model, (nn.ModuleList,), 1)))


def _repeated(model: nn.Module, containers: tuple[type, ...], times: int = 2) -> list[nn.Module]:
    """One module of each class (not torch.nn's own) that occurs at least ``times`` as items of ``containers``
    (once is enough for a transformers ModuleList: ALBERT calls its one shared layer again and again). A container
    of named parts of several classes is a block's inside, not a list of blocks (torchvision MaxViT's
    ``MBconv``, ``window_attention``, ``grid_attention``: the block is the layer holding them)."""
    items = [m for c in model.modules() if isinstance(c, containers) and _is_list(c) for m in c.children()
             if not type(m).__module__.startswith("torch.")]
    counts = Counter(type(m) for m in items)
    return list({type(m): m for m in items if counts[type(m)] >= times}.values())


def _is_list(container: nn.Module) -> bool:
    """Items indexed by number, or all of one class (torchvision ViT's ``encoder_layer_0``, …)."""
    named = dict(container.named_children())
    return all(n.isdigit() for n in named) or len({type(m) for m in named.values()}) <= 1


_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)


def _innermost(repeated: list[nn.Module]) -> list[nn.Module]:
    """The repeated modules that hold an attention (a descendant with weights, named or typed so) and no other such:
    transformer blocks, not the stages made of them."""
    blocks = [m for m in repeated if any(_ATTENTION.search(f"{n} {type(s).__name__}") and any(True for _ in s.parameters())
                                         for n, s in m.named_modules() if n)]
    kinds = {type(m) for m in blocks}
    return [m for m in blocks if not any(type(s) in kinds for n, s in m.named_modules() if n)]


def before_blocks(model: nn.Module, blocks: frozenset[str]) -> list[str]:
    """A transformers text model's default-type modules ahead of its first block (the embedding's LayerNorm and
    projection): not layers a person maps, so a one-tap guide lands on an encoder layer. Empty for a model
    whose input embedding is not a lookup table (ViT's patch convolution stays a tap)."""
    embeddings = getattr(model, "get_input_embeddings", None)
    try:
        lookup = isinstance(embeddings(), nn.Embedding) if callable(embeddings) else False
    except (NotImplementedError, AttributeError):
        lookup = False
    if not lookup:
        return []
    names = []
    for name, m in model.named_modules():
        if class_names(m) & blocks:
            return names
        if is_default_tap(m):
            names.append(name)
    return []


def expected_input(model: nn.Module) -> str | None:
    """The input size ``model``'s library records for it, as words for an error message: timm's
    ``pretrained_cfg["input_size"]``, a transformers config's ``image_size``, or what pairgraph's torchvision
    source read from the weights' metadata (``pairgraph_input_size``)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return f"{'×'.join(map(str, cfg['input_size']))} (timm's pretrained_cfg input_size)"
    size = getattr(getattr(model, "config", None), "image_size", None)
    if isinstance(size, int | list | tuple):
        side = size if isinstance(size, int) else "×".join(map(str, size))
        return f"images of {side} px (its config's image_size)"
    recorded = getattr(model, "pairgraph_input_size", None)
    return recorded if isinstance(recorded, str) else None


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
# stochastic depth reads ``self.training``: kept whole, so the generated network drops paths only in training
for _name in ("timm.layers.drop.DropPath", "torchvision.ops.stochastic_depth.StochasticDepth"):
    register_leaf_module(_name)
