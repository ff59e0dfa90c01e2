"""The zoo's built-in sequence architectures: stacked RNN/LSTM and a causal transformer decoder.

Token models take ``(B, T)`` longs; sequence models return ``(B, T, vocab_size)`` logits,
classifiers ``(B, num_classes)``. Classifiers over padded batches expect right padding with
``pad_id`` and derive their masks from the input, so every forward is one tensor in, one tensor
out, and traceable by ``torch.fx.symbolic_trace`` (also on the meta device).

Sizes follow appendix D of "Training the Untrainable" (Subramaniam et al., NeurIPS 2025):
preset ``paper`` is the paper's size, ``cpu`` a small one for 2-core machines.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from pairgraph.zoo import register_model

# --------------------------------------------------------------------------------------------
# Sequence models: stacked RNN/LSTM and a causal transformer decoder
# --------------------------------------------------------------------------------------------


class StackedRNN(nn.Module):
    """Embedding → ``num_layers`` separate single-layer RNNs/LSTMs (each its own module) → Linear to vocab."""

    def __init__(self, cell: Literal["rnn", "lstm"], vocab_size: int, num_layers: int, hidden: int):
        super().__init__()
        rnn_cls = nn.RNN if cell == "rnn" else nn.LSTM
        self.embed = nn.Embedding(vocab_size, hidden)
        self.layers = nn.ModuleList(rnn_cls(hidden, hidden, batch_first=True) for _ in range(num_layers))
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)[0]  # (output, state): keep the per-step outputs
        return self.head(h)


_RNN_PRESETS = {
    "copy_paste": {"num_layers": 4, "hidden": 768},
    "lm": {"num_layers": 5, "hidden": 512},
    "paper": {"num_layers": 4, "hidden": 768},
    "cpu": {"num_layers": 4, "hidden": 128},
}


@register_model(
    "rnn",
    input="tokens",
    presets=_RNN_PRESETS,
    description="Stacked vanilla (tanh) RNN LM target: 4 x 768 for copy-paste, 5 x 512 for language modeling.",
)
def rnn(vocab_size: int = 16, num_layers: int = 4, hidden: int = 128) -> StackedRNN:
    """Stacked vanilla tanh RNN language model."""
    return StackedRNN("rnn", vocab_size, num_layers, hidden)


@register_model(
    "lstm",
    input="tokens",
    presets=dict(_RNN_PRESETS),
    description="Stacked LSTM language model (same layout as 'rnn').",
)
def lstm(vocab_size: int = 16, num_layers: int = 4, hidden: int = 128) -> StackedRNN:
    """Stacked LSTM language model."""
    return StackedRNN("lstm", vocab_size, num_layers, hidden)


class TransformerDecoder(nn.Module):
    """Causal decoder-only transformer: token + learned position embeddings → pre-norm blocks → LayerNorm → head."""

    def __init__(self, vocab_size: int, num_layers: int, d_model: int, nhead: int, max_len: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout=dropout, batch_first=True, norm_first=True)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        pos = torch.arange(x.size(1), device=x.device)
        causal = pos.unsqueeze(0) > pos.unsqueeze(1)  # (T, T), True where a query may not look (the future)
        h = self.embed(x) + self.pos(pos)
        for block in self.blocks:
            h = block(h, src_mask=causal, is_causal=True)
        return self.head(self.norm(h))


@register_model(
    "transformer_decoder",
    input="tokens",
    presets={
        "copy_paste": {"num_layers": 4, "d_model": 768, "nhead": 12},
        "lm": {"num_layers": 4, "d_model": 512, "nhead": 16},
        "paper": {"num_layers": 4, "d_model": 768, "nhead": 12},
        "cpu": {"num_layers": 2, "d_model": 128, "nhead": 4},
    },
    description="Causal transformer decoder guide: 4 x 768 / 12 heads (copy-paste), 4 x 512 / 16 heads (LM).",
)
def transformer_decoder(
    vocab_size: int = 16,
    num_layers: int = 2,
    d_model: int = 128,
    nhead: int = 4,
    max_len: int = 512,
    dropout: float = 0.0,
) -> TransformerDecoder:
    """Causal decoder-only transformer language model; inputs may be at most ``max_len`` long."""
    return TransformerDecoder(vocab_size, num_layers, d_model, nhead, max_len, dropout)


# --------------------------------------------------------------------------------------------
# Parity classifiers: transformer encoder (target) and vanilla RNN (guide)
# --------------------------------------------------------------------------------------------


class TransformerClassifier(nn.Module):
    """Bidirectional transformer encoder over right-padded tokens, mean-pooled over non-pad positions."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        num_layers: int,
        d_model: int,
        nhead: int,
        pad_id: int,
        max_len: int,
        dropout: float,
    ):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout=dropout, batch_first=True)
            for _ in range(num_layers)
        )
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        pad = x == self.pad_id  # (B, T) key-padding mask, True at padding
        pos = torch.arange(x.size(1), device=x.device)
        h = self.embed(x) + self.pos(pos)
        for block in self.blocks:
            h = block(h, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.head(pooled)


@register_model(
    "transformer_classifier",
    input="tokens",
    presets={
        "paper": {"num_layers": 1, "d_model": 64, "nhead": 4},
        "cpu": {"num_layers": 1, "d_model": 64, "nhead": 4},
    },
    description="Parity target: 1-layer transformer encoder, d_model 64, 4 heads, mean-pooled over non-pad tokens.",
)
def transformer_classifier(
    num_layers: int = 1,
    d_model: int = 64,
    nhead: int = 4,
    num_classes: int = 2,
    vocab_size: int = 3,
    pad_id: int = 2,
    max_len: int = 64,
    dropout: float = 0.0,
) -> TransformerClassifier:
    """Transformer encoder classifier for right-padded sequences (padding at ``pad_id``)."""
    return TransformerClassifier(vocab_size, num_classes, num_layers, d_model, nhead, pad_id, max_len, dropout)


class RNNClassifier(nn.Module):
    """Vanilla tanh RNN read out at each sequence's last non-pad position (right padding)."""

    def __init__(self, vocab_size: int, num_classes: int, num_layers: int, hidden: int, pad_id: int):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, hidden)
        self.layers = nn.ModuleList(nn.RNN(hidden, hidden, batch_first=True) for _ in range(num_layers))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)[0]
        last = ((x != self.pad_id).sum(1) - 1).clamp(min=0)  # (B,) index of the last real token
        index = last.view(-1, 1, 1).expand(-1, 1, h.size(-1))
        return self.head(h.gather(1, index).squeeze(1))


@register_model(
    "rnn_classifier",
    input="tokens",
    presets={"paper": {"num_layers": 1, "hidden": 64}, "cpu": {"num_layers": 1, "hidden": 64}},
    description="Parity guide: 1-layer vanilla RNN, hidden 64, read out at the last non-pad token.",
)
def rnn_classifier(
    num_layers: int = 1,
    hidden: int = 64,
    num_classes: int = 2,
    vocab_size: int = 3,
    pad_id: int = 2,
) -> RNNClassifier:
    """Vanilla RNN classifier for right-padded sequences (padding at ``pad_id``)."""
    return RNNClassifier(vocab_size, num_classes, num_layers, hidden, pad_id)
