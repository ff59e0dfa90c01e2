"""Models pairgraph was not written against (issues #19 and #33): each from timm, transformers or torchvision,
shrunk by its config where it has one, on both sides of a pair, on an image or a sequence task.

As the **guide** (a small zoo target): compile, build, run a batch — the tap provider, the taps, whether every
tap is batch-first, whether a tap lies in the output head (the library's declared head, an auxiliary classifier
or pooler, or the module whose output is the logits) and whether the taps are whole blocks where the library
declares blocks (no tap inside one). As the **target** (a small zoo guide): train 2 steps, stopped after the
first (a checkpoint), then resumed from it to the end. A model pairgraph does not support must be refused at
compile in one line; anything else — a traceback, a wrong tap — is what this script looks for.

    nice -n 10 python scripts/try_unseen_models.py [NAME ...]  →  results/unseen_models.json (all models when no NAME;
    with NAMEs, their rows of the committed file are replaced and its summary recounted)

No weights are downloaded; random images in a folder dataset stand in for image data (offline).
"""

import json
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

import pairgraph
from pairgraph.compiler.build import build_root
from pairgraph.core.policy import block_types, head_names, in_head
from pairgraph.tasks import get_task
from pairgraph.training import resume_run

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "unseen"
IMAGES = WORK / "images"
IMG = {"kind": "image_classification", "dataset": f"folder:{IMAGES}", "image_size": [32, 32], "val_size": 4}
LM = {"kind": "copy_paste", "length": [2, 4], "size": 200}
CLS = {"kind": "parity", "length": [4, 8], "size": 200}
SMALL = {IMG["kind"]: {"model": "deep_fcn", "args": {"num_blocks": 2, "width": 16}},
         LM["kind"]: {"model": "rnn", "args": {"num_layers": 2, "hidden": 16}},
         CLS["kind"]: {"model": "rnn_classifier", "args": {"hidden": 16}}}
# CPU-sized transformers configs, in the names each config takes
ENC = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
DEC = {**ENC, "num_key_value_heads": 2}
VIT = {**ENC, "patch_size": 8}
TVIT = {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}  # timm ViT-likes

CASES = [
    # timm, image
    ("timm:resnet18", {}, IMG), ("timm:efficientnet_b0", {}, IMG), ("timm:mobilenetv3_small_100", {}, IMG),
    ("timm:regnetx_002", {}, IMG), ("timm:ghostnet_100", {}, IMG), ("timm:nf_resnet26", {}, IMG),
    ("timm:dla34", {}, IMG),
    ("timm:lcnet_050", {}, IMG), ("timm:mnasnet_100", {}, IMG), ("timm:rexnet_100", {}, IMG),
    ("timm:resnest14d", {}, IMG), ("timm:convnext_atto", {}, IMG),
    ("timm:poolformer_s12", {}, IMG), ("timm:mobilevit_xxs", {}, IMG), ("timm:levit_128s", {}, IMG),
    ("timm:vit_tiny_patch16_224", TVIT, IMG), ("timm:deit_tiny_patch16_224", TVIT, IMG),
    ("timm:beit_base_patch16_224", TVIT, IMG), ("timm:eva02_tiny_patch14_224", TVIT, IMG),
    ("timm:cait_xxs24_224", TVIT, IMG), ("timm:xcit_nano_12_p16_224", {"patch_size": 8, "depth": 2}, IMG),
    ("timm:coat_lite_tiny", {}, IMG), ("timm:maxvit_tiny_tf_224", {}, IMG),
    ("timm:swin_tiny_patch4_window7_224", {"window_size": 2}, IMG), ("timm:pit_ti_224", {}, IMG),
    ("timm:mixer_s16_224", {"patch_size": 8}, IMG), ("timm:inception_v3", {}, IMG),
    # transformers, sequence
    ("hf:bert", ENC, CLS), ("hf:albert", {**ENC, "embedding_size": 16}, CLS), ("hf:roberta", ENC, CLS),
    ("hf:electra", {**ENC, "embedding_size": 16}, CLS), ("hf:xlm-roberta", ENC, CLS),
    ("hf:distilbert", {"n_layers": 2, "dim": 32, "n_heads": 2, "hidden_dim": 64}, CLS),
    ("hf:deberta-v2", ENC, CLS), ("hf:mobilebert", {**ENC, "embedding_size": 16, "intra_bottleneck_size": 32,
                                                    "true_hidden_size": 32}, CLS),
    ("hf:gpt2", {"n_layer": 2, "n_embd": 32, "n_head": 2}, LM),
    ("hf:gpt_neo", {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "attention_types": [[["global"], 2]]}, LM),
    ("hf:gpt_neox", ENC, LM), ("hf:opt", {**ENC, "ffn_dim": 64, "word_embed_proj_dim": 32}, LM),
    ("hf:llama", DEC, LM), ("hf:mistral", DEC, LM), ("hf:qwen2", DEC, LM), ("hf:gemma", {**DEC, "head_dim": 16}, LM),
    ("hf:falcon", {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2}, LM),
    ("hf:phi", ENC, LM), ("hf:bloom", {"n_layer": 2, "hidden_size": 32, "n_head": 2}, LM),
    ("hf:t5", {}, LM), ("hf:bart", {}, CLS),
    # transformers, image
    ("hf:vit", VIT, IMG), ("hf:deit", VIT, IMG), ("hf:beit", VIT, IMG), ("hf:dinov2", VIT, IMG),
    ("hf:convnext", {"depths": [1, 1], "hidden_sizes": [16, 32], "num_stages": 2}, IMG),
    ("hf:resnet", {"depths": [1, 1], "hidden_sizes": [16, 32], "embedding_size": 16}, IMG),
    ("hf:swin", {"depths": [1, 1], "num_heads": [1, 2], "embed_dim": 16, "patch_size": 2, "window_size": 4}, IMG),
    # torchvision, image
    ("torchvision:resnet18", {}, IMG), ("torchvision:mobilenet_v3_small", {}, IMG),
    ("torchvision:efficientnet_b0", {}, IMG), ("torchvision:efficientnet_v2_s", {}, IMG),
    ("torchvision:convnext_tiny", {}, IMG), ("torchvision:regnet_y_400mf", {}, IMG),
    ("torchvision:squeezenet1_0", {}, IMG), ("torchvision:shufflenet_v2_x0_5", {}, IMG),
    ("torchvision:mnasnet0_5", {}, IMG), ("torchvision:googlenet", {"init_weights": False}, IMG),
    ("torchvision:inception_v3", {"init_weights": False}, IMG), ("torchvision:swin_t", {}, IMG),
    ("torchvision:maxvit_t", {}, IMG), ("torchvision:mobilenet_v2", {}, IMG),
]


def main() -> None:
    only = sys.argv[1:]
    _images()
    records = []
    for ref, args, task in CASES:
        if only and not any(o == ref or o in ref for o in only):
            continue
        records.append({"model": ref, "args": args, "task": task["kind"], "guide": as_guide(ref, args, task),
                        "target": as_target(ref, args, task)})
        print(json.dumps(records[-1]), flush=True)
    path = ROOT / "results" / "unseen_models.json"
    if only and path.exists():
        rerun = {(r["model"], r["task"]): r for r in records}
        records = [rerun.pop((r["model"], r["task"]), r) for r in json.loads(path.read_text())["records"]]
        records += rerun.values()
    out = {"machine": f"{platform.machine()} CPU, torch {torch.__version__}", "models": len(records),
           "summary": summary(records), "records": records}
    path.write_text(json.dumps(out, indent=1) + "\n")


def _images() -> None:
    """A folder dataset of random 32×32 images, two classes (offline: no download)."""
    from PIL import Image

    if (IMAGES / "test" / "b").exists():
        return
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 16), ("test", 4)):
        for c in ("a", "b"):
            (IMAGES / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = (torch.rand(32, 32, 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(IMAGES / split / c / f"{i}.png")


def _spec(name: str, task: dict, guide: dict, target: dict) -> dict:
    return {"name": name, "task": task, "guide": guide, "target": target,
            "train": {"batch_size": 4, "steps": 2, "eval_every": 2, "checkpoint_every": 1, "eval_batches": 1}}


def _folder(ref: str, side: str) -> Path:
    return WORK / side / ref.replace(":", "_")


def _attempt(run):
    """``run()``'s record, or how it failed: ``refused`` (one line from pairgraph) or ``crash`` (anything else)."""
    t = time.time()
    try:
        record = run()
    except pairgraph.PairgraphError as e:
        return {"result": "refused", "message": str(e), "one_line": "\n" not in str(e)}
    except Exception as e:  # noqa: BLE001 - a crash is what this script looks for
        frame = traceback.extract_tb(e.__traceback__)[-1]
        return {"result": "crash", "message": f"{type(e).__name__}: {e}"[:300], "at": f"{frame.filename}:{frame.lineno}"}
    return {"result": "ok", **record, "seconds": round(time.time() - t, 1)}


def as_guide(ref: str, args: dict, task: dict) -> dict:
    def run():
        spec = _spec("guide", task, {"model": ref, "args": args}, SMALL[task["kind"]])
        cp = pairgraph.compile(spec, _folder(ref, "guide"), render=False, notify=None)
        tk = get_task(cp.spec.task)
        x = tk.example_input(3, device="cpu")
        if not x.is_floating_point():
            x = torch.randint(1, tk.model_kwargs()["vocab_size"], x.shape)
        root = build_root(cp.spec.resolved(), "guide", tk)
        with torch.no_grad():
            out, taps = cp.build().guide(x)
        return {"provider": cp.guide.method, "taps": cp.guide.names, **_tap_checks(root, cp.guide, taps, 3),
                "logits": list(out.shape)}

    return _attempt(run)


def _tap_checks(root, graph, taps: dict, batch: int) -> dict:
    """Batch axis first, no tap in the head (declared, auxiliary or the logits' module), whole blocks."""
    heads = head_names(root)
    modules = dict(root.named_modules())
    blocks = block_types(root)
    block_names = [n for n, m in modules.items() if n and ({type(m).__name__, f"{type(m).__module__}.{type(m).__qualname__}"}
                                                          & blocks)]
    inside = [t for t in graph.names if any(t.split("@")[0].startswith(b + ".") for b in block_names)]
    return {
        "batch_first": all(v.shape[0] == batch for v in taps.values()),
        "head_tapped": [t.name for t in graph.taps if in_head(t.name, heads) or t.is_output],
        "blocks": sorted(blocks),
        "taps_at_blocks": (not inside) if blocks else None,
        "block_taps": sum(t.split("@")[0] in block_names for t in graph.names),
    }


def as_target(ref: str, args: dict, task: dict) -> dict:
    def run():
        spec = _spec("target", task, SMALL[task["kind"]], {"model": ref, "args": args})
        cp = pairgraph.compile(spec, _folder(ref, "target"), render=False, notify=None)
        runs = _folder(ref, "runs")
        shutil.rmtree(runs, ignore_errors=True)
        stopped = cp.train(runs_dir=runs, run_id="r", progress=False, stop_after=1)
        ckpt = Path(stopped["run_dir"]) / "checkpoints"
        saved = (ckpt / "last.safetensors").exists() and (ckpt / "last_state.pt").exists()
        resumed = resume_run(Path(stopped["run_dir"]), progress=False)
        return {"provider": cp.target.method, "taps": len(cp.target.names), "checkpoint_saved": saved,
                "stopped_at": stopped.get("stopped_at"), "resumed_to": resumed["steps"],
                "test_loss": resumed["test"]["loss"]}

    return _attempt(run)


def summary(records: list[dict]) -> dict:
    def count(side: str, result: str) -> int:
        return sum(r[side]["result"] == result for r in records)

    guides = [r["guide"] for r in records if r["guide"]["result"] == "ok"]
    return {
        "guide": {k: count("guide", k) for k in ("ok", "refused", "crash")},
        "target": {k: count("target", k) for k in ("ok", "refused", "crash")},
        "refusals_one_line": all(r[s].get("one_line", True) for r in records for s in ("guide", "target")),
        "guides_not_batch_first": [r["model"] for r in records if r["guide"].get("batch_first") is False],
        "guides_tapping_the_head": [r["model"] for r in records if r["guide"].get("head_tapped")],
        "guides_tapped_inside_blocks": [r["model"] for r in records if r["guide"].get("taps_at_blocks") is False],
        "targets_checkpointed_and_resumed": sum(r["target"].get("checkpoint_saved") is True
                                                and r["target"].get("resumed_to") == 2 for r in records),
        "guides_ok": len(guides),
    }


if __name__ == "__main__":
    main()
