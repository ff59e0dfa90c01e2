"""Feature-regression baselines with learned projectors: FitNets and REPA.

Both compare a target tap with a guide tap through a projector trained with the target (never with the
guide), one projector per mapped pair:

* ``fitnets`` (Romero et al. 2015, "hints"): a linear map from the target's width to the guide's — on
  token matrices that is exactly a 1×1 convolution — and the mean squared error;
* ``repa`` (Yu et al. 2025): an MLP ``Linear → SiLU → Linear → SiLU → Linear`` (hidden width
  ``hidden``; REPA uses 2,048) and the cosine similarity per token. The term is 1 − cos (REPA writes
  −cos; the constant keeps every term ≥ 0 like 1 − CKA and changes no gradient).

Taps become token matrices (b, N, d): (b, d) → one token; (b, T, d) as is (3-D taps are read as
batch, tokens, features, as ``similarity.sequence`` reads them); (b, C, H, W, …) → H·W·… tokens of C
features. Where the two sides have different token counts the larger is average-pooled to the smaller
(spatially when both are images). A padding mask, where given, keeps padded tokens out of the mean; when
the counts differ under a mask each side is first reduced to its mean over the real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from pairgraph.errors import PairgraphError

KINDS = ("fitnets", "repa")


def tokens(x: Tensor) -> Tensor:
    """A tap as (batch, tokens, features)."""
    if x.dim() == 2:
        return x[:, None, :]
    if x.dim() == 3:
        return x
    if x.dim() >= 4:
        return x.flatten(2).transpose(1, 2)
    raise PairgraphError(f"a tap of shape {tuple(x.shape)} has no feature axis to project",
                         "map taps with a batch and a feature axis")


def width(x: Tensor) -> int:
    """The feature width a projector sees on this tap."""
    return tokens(x).shape[-1]


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """(b, N, d) → (b, 1, d): the mean over the real tokens (all tokens without a fitting mask)."""
    if mask is None or mask.shape[1] != x.shape[1]:
        return x.mean(1, keepdim=True)
    w = mask.to(x.dtype)[..., None]
    return (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)


def matched(guide: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Both taps as token matrices with one token count, and the mask that still applies to them."""
    if guide.dim() >= 4 and target.dim() >= 4 and guide.shape[2:] != target.shape[2:] and guide.dim() == target.dim():
        size = [min(a, b) for a, b in zip(guide.shape[2:], target.shape[2:], strict=True)]
        pool = F.adaptive_avg_pool2d if guide.dim() == 4 else F.adaptive_avg_pool3d
        guide, target = pool(guide, size), pool(target, size)
    g, t = tokens(guide), tokens(target)
    if g.shape[1] == t.shape[1]:
        keep = mask if mask is not None and mask.shape[1] == g.shape[1] else None
        return g, t, keep
    if mask is not None:
        return _masked_mean(g, mask), _masked_mean(t, mask), None
    n = min(g.shape[1], t.shape[1])

    def pool(x: Tensor) -> Tensor:
        return x if x.shape[1] == n else F.adaptive_avg_pool1d(x.transpose(1, 2), n).transpose(1, 2)

    return pool(g), pool(t), None


def _token_mean(per_token: Tensor, mask: Tensor | None) -> Tensor:
    """(b, N) → scalar: the mean over samples and real tokens."""
    if mask is None:
        return per_token.mean()
    w = mask.to(per_token.dtype)
    return (per_token * w).sum() / w.sum().clamp_min(1)


def make_projector(kind: str, d_in: int, d_out: int, hidden: int) -> nn.Module:
    if kind == "fitnets":
        return nn.Linear(d_in, d_out)
    if kind == "repa":
        return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                             nn.Linear(hidden, d_out))
    raise PairgraphError(f"unknown projector objective {kind!r}", f"use one of {', '.join(KINDS)}")


class Projectors(nn.Module):
    """One projector per mapped pair (in the pairs' order), and the per-pair loss terms.

    ``guide_taps``/``target_taps`` are one example forward's taps (only their shapes are read).
    """

    def __init__(self, kind: str, pairs: Sequence[tuple[str, str, float]], guide_taps: dict[str, Tensor],
                 target_taps: dict[str, Tensor], hidden: int = 2048):
        super().__init__()
        self.kind = kind
        self.pairs = [(g, t) for g, t, *_ in pairs]
        self.nets = nn.ModuleList(make_projector(kind, width(target_taps[t]), width(guide_taps[g]), hidden)
                                  for g, t in self.pairs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def term(self, i: int, guide: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """The loss of pair ``i``: MSE (fitnets) or 1 − cos (repa), averaged over samples and tokens."""
        g, t, keep = matched(guide.detach(), target, mask)
        p = self.nets[i](t)
        g = g.to(p.dtype)
        if self.kind == "fitnets":
            per_token = (p - g).pow(2).mean(-1)
        else:
            per_token = 1.0 - F.cosine_similarity(p, g, dim=-1)
        return _token_mean(per_token, keep)

    def terms(self, guide_taps: dict[str, Tensor], target_taps: dict[str, Tensor],
              mask: Tensor | None = None) -> list[Tensor]:
        return [self.term(i, guide_taps[g], target_taps[t], mask) for i, (g, t) in enumerate(self.pairs)]

