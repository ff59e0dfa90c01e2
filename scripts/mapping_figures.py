"""The mapping pictures in docs/figures/ (issue #31): four pairs compiled and drawn, and a trained run inspected.

    python scripts/mapping_figures.py [--run RUN_FOLDER ...]

Writes docs/figures/mapping_<pair>.png (and .html) for the demo pair (4 pairs), ResNet-18 → Deep FCN
(40 pairs, and its `learned` mapping with the CKA matrix), ResNet-50 → deep ConvNet (106 guide taps)
and the explicit-mapping spec; with ``--run`` (repeatable), each run's mapping_training.png and mapping.html as
docs/figures/mapping_training_<spec name>.png and mapping_trained_<spec name>.html.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import pairgraph
from pairgraph.analysis.mapping_training import inspect_run

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {
    "demo_rnn_from_transformer": ("specs/rnn_from_transformer.yaml", []),
    "resnet18_to_deep_fcn": ("specs/fcn_deep_from_resnet18.yaml", []),
    "resnet18_to_deep_fcn_learned": ("specs/fcn_deep_from_resnet18.yaml", ["mapping.kind=learned"]),
    "resnet50_to_deep_convnet": ("specs/convnet_from_resnet50.yaml", []),
    "explicit_rnn_from_transformer": ("specs/explicit_rnn_from_transformer.yaml", []),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, action="append", default=[], help="a guided run folder to inspect (repeatable)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (spec, overrides) in PAIRS.items():
            cp = pairgraph.compile(ROOT / spec, Path(tmp) / name, overrides, notify=None)
            for ext in ("png", "html"):
                shutil.copyfile(cp.out_dir / f"mapping.{ext}", args.out / f"mapping_{name}.{ext}")
            print(f"mapping_{name}.png: {len(cp.guide)} guide taps, {len(cp.target)} target taps, "
                  f"{len(cp.correspondence)} pairs ({cp.correspondence.kind})")
        for run in args.run:
            found = inspect_run(run, Path(tmp) / "inspect" / run.name)
            spec_name = pairgraph.load_spec(run / "spec.yaml").name
            for f in found.files:
                stem = "mapping_training" if f.suffix == ".png" else "mapping_trained"
                shutil.copyfile(f, args.out / f"{stem}_{spec_name}{f.suffix}")
            matched = [p for p in found.curves["pairs"] if p["matched_at"] is not None]
            print(f"{run}: {len(matched)} of {len(found.curves['pairs'])} pairs matched (1 − similarity ≤ "
                  f"{found.curves['threshold']:g}): " + ", ".join(f"{p['guide']}->{p['target']} at step {p['matched_at']}"
                                                               for p in matched))

if __name__ == "__main__":
    main()
