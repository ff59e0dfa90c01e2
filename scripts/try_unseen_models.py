"""Models pairgraph was not written against: compile each as a guide, build it, run a batch, and record
the tap provider, the taps and whether every tap is batch-first (issue #19's "unseen models").

    python scripts/try_unseen_models.py [NAME ...]   →  results/unseen_models.json (all models when no NAME)
"""

import json
import sys
import time
from pathlib import Path

import torch

import pairgraph
from pairgraph.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
IMG = {"kind": "image_classification", "dataset": "cifar10", "num_classes": 10, "image_size": [32, 32]}
TOK = {"kind": "copy_paste", "length": [2, 4], "size": 200}
PAR = {"kind": "parity", "length": [4, 8], "size": 200}
# a 2-layer decoder at a CPU size, for the Llama-like configs (Llama, Mistral, Qwen2)
DECODER = {
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
}
cases = [
    ("timm:efficientnet_b0", {}, IMG),
    ("timm:mobilenetv3_small_100", {}, IMG),
    ("timm:deit_tiny_patch16_224", {"patch_size": 8}, IMG),
    ("timm:regnetx_002", {}, IMG),
    ("timm:resnet50d", {}, IMG),
    ("timm:swin_tiny_patch4_window7_224", {"img_size": 32, "window_size": 2}, IMG),
    ("timm:mixer_s16_224", {}, IMG),
    ("timm:densenet121", {}, IMG),
    ("timm:vgg11", {}, IMG),
    ("timm:levit_128s", {}, IMG),
    ("timm:eva02_tiny_patch14_224", {"patch_size": 8}, IMG),
    ("timm:mobilevit_xxs", {}, IMG),
    ("timm:poolformer_s12", {}, IMG),
    (
        "hf:llama",
        DECODER,
        TOK,
    ),
    ("hf:distilbert", {"n_layers": 2, "dim": 32, "n_heads": 2, "hidden_dim": 64}, PAR),
    ("hf:roberta", {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}, PAR),
    (
        "hf:gpt_neox",
        {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
        TOK,
    ),
    (
        "hf:opt",
        {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "ffn_dim": 64, "word_embed_proj_dim": 32},
        TOK,
    ),
    (
        "hf:mistral",
        DECODER,
        TOK,
    ),
    (
        "hf:qwen2",
        DECODER,
        TOK,
    ),
    ("hf:gpt_neo", {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "attention_types": [[["global"], 2]]}, TOK),
    (
        "hf:deit",
        {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 8},
        IMG,
    ),
    ("hf:convnext", {"depths": [1, 1], "hidden_sizes": [16, 32], "num_stages": 2}, IMG),
    ("hf:resnet", {"depths": [1, 1], "hidden_sizes": [16, 32], "embedding_size": 16}, IMG),
    (
        "hf:swin",
        {"depths": [1, 1], "num_heads": [1, 2], "embed_dim": 16, "image_size": 32, "patch_size": 2, "window_size": 4},
        IMG,
    ),
]


def main() -> None:
    only = sys.argv[1:]
    records = []
    for ref, args, task in cases:
        if only and not any(o in ref for o in only):
            continue
        records.append(try_one(ref, args, task))
        print(json.dumps(records[-1]))
    if not only:
        (ROOT / "results" / "unseen_models.json").write_text(json.dumps(records, indent=1) + "\n")


def try_one(ref, args, task):
    target = (
        {"model": "deep_fcn", "args": {"num_blocks": 2, "width": 16}}
        if task is IMG
        else (
            {"model": "rnn", "args": {"num_layers": 2, "hidden": 16}}
            if task is TOK
            else {"model": "rnn_classifier", "args": {"hidden": 16}}
        )
    )
    spec = {"name": "u", "task": task, "guide": {"model": ref, "args": args}, "target": target}
    t = time.time()
    try:
        cp = pairgraph.compile(spec, ROOT / "build" / "unseen" / ref.replace(":", "_"), render=False, notify=None)
        pair = cp.build()
        tk = get_task(cp.spec.task)
        x = tk.example_input(4, device="cpu")
        if not x.is_floating_point():
            x = torch.randint(1, tk.model_kwargs()["vocab_size"], x.shape)
        with torch.no_grad():
            out, taps = pair.guide(x)
        return {
            "model": ref,
            "args": args,
            "result": "ok",
            "provider": cp.guide.method,
            "taps": cp.guide.names,
            "not_batch_first": [k for k, v in taps.items() if v.shape[0] != 4],
            "logits": list(out.shape),
            "seconds": round(time.time() - t, 1),
        }
    except pairgraph.PairgraphError as e:
        return {"model": ref, "args": args, "result": "error", "message": str(e)}
    except Exception as e:  # noqa: BLE001 - a crash is what this script looks for
        return {"model": ref, "args": args, "result": "crash", "message": f"{type(e).__name__}: {e}"[:300]}


if __name__ == "__main__":
    main()
