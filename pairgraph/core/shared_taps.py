"""Guide taps whose similarity to any target tap is provably another guide tap's: computed once.

A frozen guide's BatchNorm in eval mode is a per-channel affine map y = s_c·x + b_c of its input. When
its input is exactly another tapped module's output and the scale s_c = γ_c / √(running_var_c + ε) is
the same for every channel — an untrained guide's BatchNorm (γ = 1, running_var = 1) — then y is a
uniform rescale of that tap plus a per-feature offset. Linear and debiased CKA centre each feature over
the batch (the offset goes) and are invariant to a uniform scale, so CKA(y, T) = CKA(x, T) for every
target tap T: the guide's side of those terms (its gram, or its cached rows) is computed once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pairgraph.core.taps import split_call
from pairgraph.core.trace import preserved_state

#: measures for which a uniform rescale plus a per-feature offset leaves the similarity unchanged
SCALE_INVARIANT = frozenset({"cka", "debiased_cka"})


def uniform_rescale(module: nn.Module) -> bool:
    """An eval-mode BatchNorm whose per-channel scale γ / √(var + ε) is the same for every channel."""
    if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.running_var is None:
        return False
    scale = torch.rsqrt(module.running_var.detach().float() + module.eps)
    if module.affine:
        scale = scale * module.weight.detach().float()
    return bool(scale[0] != 0 and ((scale - scale[0]).abs() <= 1e-6 * scale[0].abs()).all())


def rescaled_taps(network: nn.Module, example: Tensor, taps: Sequence[str]) -> dict[str, str]:
    """Tap → the tap it rescales uniformly (see the module docstring), from one example forward of the
    wrapped guide in eval mode (which changes nothing: :func:`preserved_state`)."""
    root = network.root if isinstance(getattr(network, "root", None), nn.Module) else network  # hooked / timm
    modules: dict[str, nn.Module | None] = {}
    for tap in dict.fromkeys(taps):
        name, call = split_call(tap)
        try:
            modules[tap] = root.get_submodule(name) if call is None else None
        except AttributeError:
            continue
    outputs: list[tuple[Tensor, str]] = []  # the tensors themselves: ids of freed tensors are reused
    inputs: dict[str, Tensor] = {}
    handles = []
    for tap, m in modules.items():
        if m is None:
            continue
        handles.append(m.register_forward_hook(
            lambda mod, args, out, tap=tap: outputs.append((out, tap)) if isinstance(out, Tensor) else None))
        if uniform_rescale(m):
            handles.append(m.register_forward_pre_hook(
                lambda mod, args, tap=tap: inputs.setdefault(tap, args[0]) if args and isinstance(args[0], Tensor)
                else None))
    try:
        with preserved_state(network):
            network.eval()
            network(example)
    finally:
        for h in handles:
            h.remove()
    found = {}
    for tap, x in inputs.items():
        source = next((name for out, name in outputs if out is x and name != tap), None)
        if source is not None:
            found[tap] = found.get(source, source)
    return found


def describe(shared: dict[str, str], limit: int = 3) -> str:
    """``a = b, c = d, … (N in all)``: the shared taps for a one-line notice."""
    shown = ", ".join(f"{a} = {b}" for a, b in list(shared.items())[:limit])
    return shown + (f", … ({len(shared)} in all)" if len(shared) > limit else "")
