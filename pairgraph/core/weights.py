"""Model weights on disk, read and written safely: safetensors, or ``torch.load(weights_only=True)``.

Tied parameters (a language model's embedding and output head are one tensor under two names) are
written once, under the first name, and restored tied: the names a model ties (:func:`tied_names`) are
filled from the name kept when a checkpoint is read back, so safetensors never sees shared memory.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pairgraph.errors import PairgraphError, one_line
from pairgraph.paths import atomic_write


def read_state(path: str | Path, side: str = "guide") -> dict[str, Tensor]:
    """A checkpoint's state dict, read safely: safetensors, or ``torch.load(weights_only=True)``.

    A pickle holding anything but tensors and plain containers is refused, never executed.
    """
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
            raise PairgraphError(f"cannot read {side} checkpoint {str(p)!r}: {one_line(e)}",
                                 "give a .safetensors or .pt state dict") from None
        # weights_only=True refuses code and arbitrary objects: never executed, reported here
        lines = [ln.strip() for ln in str(e).splitlines()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), "") or lines[0]
        raise PairgraphError(
            f"refused to load {side} checkpoint {str(p)!r}: it is a pickle holding more than tensors ({detail[:200]})",
            "pairgraph never unpickles code; convert a trusted checkpoint to .safetensors or a plain state dict",
        ) from None
    except Exception as e:  # noqa: BLE001 - safetensors/torch raise many kinds for a bad file
        raise PairgraphError(f"cannot read {side} checkpoint {str(p)!r}: {one_line(e)}",
                             "give a .safetensors or .pt state dict") from None
    if not isinstance(state, dict):
        raise PairgraphError(f"{side} checkpoint {str(p)!r} holds a {type(state).__name__}, not a state dict",
                             "save it with safetensors or torch.save(model.state_dict())")
    return state


def tied_names(module: nn.Module) -> dict[str, str]:
    """State-dict names that are another name's tensor: ``{alias: first name}`` — the same Parameter or buffer
    registered twice (found by identity, so on the meta device too), or the same view of the same memory."""
    first: dict[Any, str] = {}
    aliases: dict[str, str] = {}
    for name, t in module.state_dict(keep_vars=True).items():
        keys = [("id", id(t))]
        if isinstance(t, Tensor) and t.device.type != "meta" and t.numel():
            keys.append((t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride()))
        kept = next((first[k] for k in keys if k in first), None)
        if kept is not None:
            aliases[name] = kept
        for k in keys:
            first.setdefault(k, kept or name)
    return aliases


def with_tied(module: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with the names ``module`` ties filled from the name a checkpoint kept (see :func:`state_to_save`)."""
    missing = {a: k for a, k in tied_names(module).items() if a not in state and k in state}
    return {**state, **{a: state[k] for a, k in missing.items()}} if missing else state


def state_to_save(module: nn.Module) -> dict[str, Tensor]:
    """``module``'s state dict on the CPU with each tied tensor once (its first name); any other tensors that
    still share memory are copied, so safetensors can write them."""
    aliases = tied_names(module)
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for k, v in module.state_dict().items():
        if k in aliases:
            continue
        v = v.detach().contiguous().cpu()
        if v.numel() and v.untyped_storage().data_ptr() in seen:
            v = v.clone()
        if v.numel():
            seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


def check_fits(model: nn.Module, state: dict[str, Tensor], path: str | Path, side: str = "guide") -> None:
    """Raise a one-line error unless ``state`` has every key of ``model`` with the same shapes (a tied name may
    be missing: it is read from the name it is tied to)."""
    own = model.state_dict()
    state = with_tied(model, state)
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
    state = with_tied(model, read_state(path, side))
    check_fits(model, state, Path(path).expanduser(), side)
    own = model.state_dict()
    model.load_state_dict({k: state[k] for k in own}, strict=True)


def save_weights(path: str | Path, module: nn.Module) -> None:
    """Write ``module``'s state dict as safetensors, atomically; tied tensors once (:func:`state_to_save`)."""
    from safetensors.torch import save

    atomic_write(path, save(state_to_save(module)))
