"""What generated ``guided_pair.py`` modules (and anyone's own training loop) run on.

* :class:`TappedNetwork` — base of the generated networks: it adopts an eager model's
  submodules, so the generated ``forward`` (from the fx graph) returns ``(output, taps)`` and
  the state dict keys are the eager model's.
* :class:`GuidedPair` — task loss + Σ w·(1 − M(target tap, guide tap)) with ONE forward of each
  network, the guide frozen and run under ``no_grad``; also the baseline and distill modes.
* :class:`GuidanceLoss` — a drop-in nn.Module for your own loop: hooks registered once on the
  target capture its taps during your forward; calling it runs the guide and returns the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pairgraph.errors import PairgraphError
from pairgraph.similarity import get_measure


def disable_inplace(module: nn.Module) -> nn.Module:
    """Turn off in-place activations (e.g. torchvision's ``ReLU(inplace=True)``): they would
    overwrite a tapped BatchNorm output after it was captured."""
    for m in module.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    return module


def tap_key(guide: str, target: str) -> str:
    """The name of a pair's loss term in logs: ``guide->target``."""
    return f"{guide}->{target}"


class TappedNetwork(nn.Module):
    """A network whose forward returns ``(output, {tap name: activation with batch first})``.

    Generated subclasses set ``TAPS`` and define ``forward``; the constructor adopts ``root``'s
    children, parameters and buffers under their own names.
    """

    TAPS: tuple[str, ...] = ()

    def __init__(self, root: nn.Module):
        super().__init__()
        disable_inplace(root)
        for name, child in root.named_children():
            self.add_module(name, child)
        for name, p in root.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in root.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in root._non_persistent_buffers_set)
        for name, value in vars(root).items():
            if isinstance(value, Tensor) and not hasattr(self, name):
                setattr(self, name, value)


class HookedNetwork(nn.Module):
    """The fallback for models fx cannot trace: forward hooks (registered once) collect the taps."""

    def __init__(self, root: nn.Module, taps: Sequence[tuple[str, int | None, int]]):
        super().__init__()
        self.root = disable_inplace(root)
        self.TAPS = tuple(t[0] for t in taps)
        self._captured: dict[str, Tensor] = {}
        modules = dict(root.named_modules())
        for name, index, axis in taps:
            modules[name].register_forward_hook(_capture_hook(self._captured, name, index, axis))

    def forward(self, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
        self._captured.clear()
        out = self.root(x)
        taps = dict(self._captured)
        self._captured.clear()
        return out, taps

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # same keys as the eager model
        return self.root.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.root.load_state_dict(state_dict, strict=strict, assign=assign)


def select_output(value: Any, index: int | None, batch_axis: int) -> Tensor:
    """A tap's activation from a module output: tuple element ``index``, batch moved to axis 0."""
    if index is not None:
        value = value[index]
    if batch_axis:
        value = value.movedim(batch_axis, 0)
    return value


def _capture_hook(
    store: dict[str, Tensor], name: str, index: int | None, axis: int, first_only: bool = True
) -> Callable[..., None]:
    """Record a module's output; ``first_only`` keeps the first call of a module used twice.

    The activation is cloned: eager code may modify a module's output in place after the hook
    ran (torchvision's ``out += identity`` after ``bn2``), which would corrupt the tap.
    """

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not (first_only and name in store):
            store[name] = select_output(output, index, axis).clone()

    return hook


# ---------------------------------------------------------------- the loss


def alignment_terms(
    guide_taps: dict[str, Tensor],
    target_taps: dict[str, Tensor],
    pairs: Sequence[tuple[str, str, float]],
    measure: str = "cka",
    mask: Tensor | None = None,
    sequence: str = "flatten",
    guide_states: dict[str, Any] | None = None,
) -> dict[str, Tensor]:
    """1 − M for every pair; each tap is prepared once (its gram shared by all its pairs).

    ``guide_states`` are already-prepared guide taps (from a :class:`pairgraph.cache.GuideCache`);
    ``guide_taps`` is then not read.
    """
    m = get_measure(measure)
    g_states = guide_states if guide_states is not None else {
        g: m.prepare(guide_taps[g], mask, sequence) for g in dict.fromkeys(p[0] for p in pairs)}
    t_states = {t: m.prepare(target_taps[t], mask, sequence) for t in dict.fromkeys(p[1] for p in pairs)}
    return {tap_key(g, t): 1.0 - m.score(g_states[g], t_states[t]) for g, t, _ in pairs}


def distill_loss(student: Tensor, teacher: Tensor, temperature: float, mask: Tensor | None = None) -> Tensor:
    """Hinton distillation: T²·KL(softmax(teacher/T) ‖ softmax(student/T)); sigmoid for one logit."""
    t = temperature
    if student.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t)) * t * t
    s = student.reshape(-1, student.shape[-1])
    g = teacher.reshape(-1, teacher.shape[-1])
    if mask is not None and student.dim() == 3:
        keep = mask.reshape(-1)
        s, g = s[keep], g[keep]
    kl = F.kl_div(F.log_softmax(s.float() / t, -1), F.log_softmax(g.float() / t, -1), log_target=True, reduction="batchmean")
    return kl * t * t


@dataclass
class PairOutput:
    """One step's result: the total loss to backpropagate and its parts (for logging)."""

    loss: Tensor
    task_loss: Tensor
    guidance_loss: Tensor
    output: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    guided: bool = False


class GuidedPair(nn.Module):
    """Target + frozen guide: ``forward(x, y, step)`` → :class:`PairOutput`.

    mode ``guidance``: task + weight·Σ(1 − M); ``baseline``: task only (guide never called);
    ``distill``: task + weight·logit distillation. With ``until_step`` the guide is called only
    while ``step < until_step``; ``guide_input="noise"`` feeds it ``noise_fn(x)`` instead of x.
    With a ``guide_cache`` (:meth:`cache_guide`) and the batch's example numbers passed as
    ``index``, the guide is not run: its prepared taps come from the cache.
    """

    def __init__(
        self,
        guide: nn.Module,
        target: nn.Module,
        pairs: Sequence[tuple[str, str, float]],
        *,
        task_loss: Callable[[Tensor, Tensor], Tensor],
        measure: str = "cka",
        sequence: str = "flatten",
        weight: float = 1.0,
        mode: str = "guidance",
        until_step: int | None = None,
        guide_input: str = "same",
        temperature: float = 4.0,
        guide_bn: str = "eval",
        noise_fn: Callable[[Tensor], Tensor] | None = None,
        mask_fn: Callable[[Tensor], Tensor | None] | None = None,
    ):
        super().__init__()
        self.target = target
        self.guide = guide
        self.pairs = [(g, t, float(w)) for g, t, w in pairs]
        self.task_loss = task_loss
        self.measure, self.sequence = measure, sequence
        self.weight, self.mode, self.until_step = weight, mode, until_step
        self.guide_input, self.temperature, self.guide_bn = guide_input, temperature, guide_bn
        self.noise_fn, self.mask_fn = noise_fn, mask_fn
        self.guide.requires_grad_(False)
        self.guide_calls = 0
        self.guide_cache: Any = None  # a pairgraph.cache.GuideCache, set by cache_guide()
        self.global_batch = False  # set by the trainer under torchrun (see pairgraph.distributed)
        self.train()

    def train(self, mode: bool = True) -> GuidedPair:
        self.training = mode
        self.target.train(mode)
        self.guide.eval()  # the guide is never updated: running stats stay as they are
        if self.guide_bn == "batch":
            for m in self.guide.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
                    m.track_running_stats = False  # batch statistics, running buffers untouched
        return self

    def guiding(self, step: int | None) -> bool:
        if self.mode == "baseline":
            return False
        return self.until_step is None or step is None or step < self.until_step

    def cache_guide(self, inputs: Callable[[Tensor], Tensor], n: int, *, max_bytes: float = 4 * 2**30,
                    chunk: int = 256) -> Any:
        """Run the guide once over examples ``0..n-1`` (``inputs(index)`` → batch) and keep its taps.

        Only valid when the guide sees exactly the training example on every step: mode guidance,
        guide_input same, guide_bn eval, no augmentation, not data-parallel.
        """
        from pairgraph.cache import GuideCache

        why = ("mode is " + self.mode if self.mode != "guidance" else
               "guide_input is noise" if self.guide_input != "same" else
               "guide_bn is batch (statistics depend on the batch)" if self.guide_bn != "eval" else None)
        if why:
            raise PairgraphError(f"cannot cache the guide: {why}", "set guidance.cache_guide: false")
        device = next(iter(self.target.parameters())).device
        self.guide_cache = GuideCache.build(
            self.guide, inputs, n, [p[0] for p in self.pairs], measure=self.measure, sequence=self.sequence,
            mask_fn=self.mask_fn, chunk=chunk, max_bytes=max_bytes, device=device)
        self.train(self.training)
        return self.guide_cache

    def forward(self, x: Tensor, y: Tensor, step: int | None = None, index: Tensor | None = None) -> PairOutput:
        out, target_taps = self.target(x)
        task = self.task_loss(out, y)
        zero = task.new_zeros(())
        if not self.guiding(step):
            return PairOutput(task, task, zero, out)
        cached = self.guide_cache is not None and index is not None and not self.global_batch
        if cached:  # the guide's prepared taps come from the cache: no guide forward this step
            guide_taps, g_out = {}, None
        else:
            gx = x
            if self.guide_input == "noise":
                if self.noise_fn is None:
                    raise PairgraphError("guide_input 'noise' needs a task noise function", "build the pair from a spec")
                gx = self.noise_fn(x)
            self.guide_calls += 1
            with torch.no_grad():
                g_out, guide_taps = self.guide(gx)
        mask = self.mask_fn(x) if self.mask_fn is not None else None
        if self.mode == "distill":
            d = distill_loss(out, g_out, self.temperature, mask)
            return PairOutput(task + self.weight * d, task, d, out, {"distill": d}, True)
        if self.global_batch:  # data-parallel: CKA over the global batch, not each rank's shard
            from pairgraph.distributed import gather_batch

            # collectives must run in the same order on every rank: ordered, not set (hash-randomised)
            guide_taps = {g: gather_batch(guide_taps[g]) for g in dict.fromkeys(p[0] for p in self.pairs)}
            target_taps = {t: gather_batch(target_taps[t]) for t in dict.fromkeys(p[1] for p in self.pairs)}
            mask = gather_batch(mask) if mask is not None else None
        terms = alignment_terms(guide_taps, target_taps, self.pairs, self.measure, mask, self.sequence,
                                guide_states=self.guide_cache.states(index) if cached else None)
        align = sum(w * terms[tap_key(g, t)] for g, t, w in self.pairs)
        return PairOutput(task + self.weight * align, task, align, out, terms, True)


class GuidanceLoss(nn.Module):
    """Drop guidance into your own training loop.

    >>> guidance = GuidanceLoss(guide, target, example_input=x[:8])
    >>> logits = target(x)                       # hooks capture the target's taps
    >>> loss = F.cross_entropy(logits, y) + guidance(x)

    ``mapping`` is a mapper name (``uniform``, ``depth``) or a list of (guide, target, weight)
    triples; ``guide_layers``/``target_layers`` are :class:`pairgraph.spec.LayerSelection`-like
    objects or dicts. The guide is frozen and runs under ``no_grad``; the target is not owned.
    """

    def __init__(
        self,
        guide: nn.Module,
        target: nn.Module,
        *,
        example_input: Tensor,
        mapping: str | Sequence[tuple[str, str, float]] = "uniform",
        measure: str = "cka",
        sequence: str = "flatten",
        weight: float = 1.0,
        guide_layers: Any = None,
        target_layers: Any = None,
    ):
        super().__init__()
        from pairgraph.mapping import build_mapping
        from pairgraph.spec import LayerSelection
        from pairgraph.trace import trace

        def selection(s: Any) -> Any:
            return LayerSelection.model_validate(s) if isinstance(s, dict) else (s or LayerSelection())

        example = example_input[:2]
        disable_inplace(guide)
        disable_inplace(target)  # a captured activation must not be modified in place afterwards
        with torch.no_grad():
            was = target.training
            gg = trace(guide, example, selection(guide_layers), "guide")
            tg = trace(target, example, selection(target_layers), "target")
            target.train(was)
        if isinstance(mapping, str):
            self.correspondence = build_mapping(mapping, gg, tg)
            pairs = self.correspondence.pairs
        else:
            pairs = [(g, t, float(w)) for g, t, w in mapping]
        self.pairs = pairs
        self.measure, self.sequence, self.weight = measure, sequence, weight
        self._guide = HookedNetwork(guide, [(t.name, t.output_index, t.batch_axis) for t in gg.taps
                                            if t.name in {p[0] for p in pairs}])
        self._guide.requires_grad_(False)
        self._captured: dict[str, Tensor] = {}
        needed = {p[1] for p in pairs}
        modules = dict(target.named_modules())
        self._handles = [
            modules[t.name].register_forward_hook(
                _capture_hook(self._captured, t.name, t.output_index, t.batch_axis, first_only=False)
            )
            for t in tg.taps if t.name in needed
        ]
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if not self._captured:
            raise PairgraphError("GuidanceLoss found no target activations", "call target(x) before guidance(x) each step")
        target_taps = dict(self._captured)
        self._captured.clear()
        self._guide.eval()
        with torch.no_grad():
            _, guide_taps = self._guide(x)
        terms = alignment_terms(guide_taps, target_taps, self.pairs, self.measure, mask, self.sequence)
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        return self.weight * sum(w * terms[tap_key(g, t)] for g, t, w in self.pairs)

    def remove(self) -> None:
        """Detach the hooks from the target."""
        for h in self._handles:
            h.remove()


# ---------------------------------------------------------------- building from a spec


def _first_line(e: BaseException) -> str:
    """``Type: first line of the message`` — one line, whatever the exception says."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def read_state(path: str | Path, side: str = "guide") -> dict[str, Tensor]:
    """A checkpoint's state dict, read safely: safetensors, or ``torch.load(weights_only=True)``.

    A pickle holding anything but tensors and plain containers is refused, never executed.
    """
    import pickle

    p = Path(path).expanduser()
    if not p.exists():
        raise PairgraphError(f"{side} checkpoint {str(p)!r} not found", f"fix {side}.weights or train the guide first")
    if p.is_dir():
        raise PairgraphError(f"{side} checkpoint {str(p)!r} is a directory", "give a .safetensors or .pt file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
            state = state.get("model", state) if isinstance(state, dict) else state
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():  # not a pickle at all (garbage, wrong format)
            raise PairgraphError(f"cannot read {side} checkpoint {str(p)!r}: {_first_line(e)}",
                                 "give a .safetensors or .pt state dict") from None
        # weights_only=True refuses code and arbitrary objects: never executed, reported here
        lines = [ln.strip() for ln in str(e).splitlines()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), "") or lines[0]
        raise PairgraphError(
            f"refused to load {side} checkpoint {str(p)!r}: it is a pickle holding more than tensors ({detail[:200]})",
            "pairgraph never unpickles code; convert a trusted checkpoint to .safetensors or a plain state dict",
        ) from None
    except Exception as e:  # noqa: BLE001 - safetensors/torch raise many kinds for a bad file
        raise PairgraphError(f"cannot read {side} checkpoint {str(p)!r}: {_first_line(e)}",
                             "give a .safetensors or .pt state dict") from None
    if not isinstance(state, dict):
        raise PairgraphError(f"{side} checkpoint {str(p)!r} holds a {type(state).__name__}, not a state dict",
                             "save it with safetensors or torch.save(model.state_dict())")
    return state


def check_fits(model: nn.Module, state: dict[str, Tensor], path: str | Path, side: str = "guide") -> None:
    """Raise a one-line error unless ``state`` has every key of ``model`` with the same shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    bad = sorted(k for k in own if k in state and not (isinstance(state[k], Tensor)
                                                      and tuple(state[k].shape) == tuple(own[k].shape)))
    if missing or bad:
        what = f"missing {missing[:3]}" if missing else f"shape mismatch at {bad[:3]}"
        raise PairgraphError(
            f"{side} checkpoint {str(path)!r} does not fit the {side} architecture ({what})",
            f"use a checkpoint of the same model and args as {side}",
        )


def load_weights(model: nn.Module, path: str | Path, side: str = "guide") -> None:
    """Load a checkpoint safely (see :func:`read_state`) after checking it fits ``model``."""
    state = read_state(path, side)
    check_fits(model, state, Path(path).expanduser(), side)
    own = model.state_dict()
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def build_root(spec: dict[str, Any], side: str, task: Any, device: str | torch.device = "cpu") -> nn.Module:
    """Build the eager ``guide`` or ``target`` model of a resolved spec, seeded, on ``device``."""
    from pairgraph.zoo import build_model

    net = spec[side]
    seed = int(spec["train"]["seed"]) + (0 if side == "guide" else 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(net["model"], net.get("args", {}), task.model_kwargs())
    return model.to(device)


def assemble(
    spec: dict[str, Any],
    guide_cls: Callable[[nn.Module], nn.Module],
    target_cls: Callable[[nn.Module], nn.Module],
    pairs: Sequence[tuple[str, str, float]],
    device: str | torch.device = "cpu",
    guide_weights: str | Path | None = None,
) -> GuidedPair:
    """Build a :class:`GuidedPair` from a resolved spec and the generated network classes."""
    from pairgraph.tasks import get_task

    task = get_task(spec["task"])
    guide_root = build_root(spec, "guide", task, device)
    weights = guide_weights or (spec["guide"].get("weights") if spec["guide"].get("weights") not in ("untrained", "train") else None)
    if weights:
        load_weights(guide_root, weights)
    target_root = build_root(spec, "target", task, device)
    g, s = spec["guidance"], spec["similarity"]
    return GuidedPair(
        guide_cls(guide_root),
        target_cls(target_root),
        pairs,
        task_loss=task.loss,
        measure=s["measure"],
        sequence=s["sequence"],
        weight=g["weight"],
        mode=g["mode"],
        until_step=g["until_step"],
        guide_input=g["guide_input"],
        temperature=g["temperature"],
        guide_bn=g["guide_bn"],
        noise_fn=task.noise_input,
        mask_fn=task.valid_mask if s.get("mask_padding", True) else None,
    )


def hooked(taps: Sequence[tuple[str, int | None, int]]) -> Callable[[nn.Module], HookedNetwork]:
    """Class-like factory used by generated modules for networks traced with hooks."""

    def make(root: nn.Module) -> HookedNetwork:
        return HookedNetwork(root, taps)

    return make
