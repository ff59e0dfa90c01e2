"""Guide and target must not share tensors: the guide is frozen, so a parameter both hold would
silently never train (or, when the two are one network, the target could not train at all), and a
buffer both hold (BatchNorm statistics) would change the guide as the target trains."""

from __future__ import annotations

from torch import nn

from pairgraph.errors import PairgraphError, check_type


def check_not_shared(guide: nn.Module, target: nn.Module, where: str) -> None:
    """Refuse, in one line naming the first shared tensor, a guide and target that share a parameter or buffer
    (or that are not modules at all)."""
    check_type(guide, nn.Module, f"{where}: the guide")
    check_type(target, nn.Module, f"{where}: the target")
    if guide is target:
        raise PairgraphError(f"{where}: the guide and the target are the same network",
                             "guide the target with another network (e.g. a copy.deepcopy of it, frozen as it is now)")
    held = {id(t): n for group in (guide.named_parameters(remove_duplicate=False), guide.named_buffers(remove_duplicate=False))
            for n, t in group}
    for group in (target.named_parameters(remove_duplicate=False), target.named_buffers(remove_duplicate=False)):
        for name, t in group:
            if id(t) in held:
                raise PairgraphError(
                    f"{where}: the target's {name} is also the guide's {held[id(t)]} (a module both networks share); "
                    "the frozen guide would keep it from training",
                    "give each network its own modules (copy.deepcopy the shared one into one of them)")
