"""`make test-browser`: open mapping.html in headless Chromium and check it works (issue #31, item 4).

For the demo pair (copy-paste, mapped `learned` so the page has its heatmap) and ResNet-18 → Deep FCN
(uniform), compile the spec, open ``mapping.html`` from a file URL and check: no console error and no
uncaught exception; as many tap circles, mapping edges and graph edges in the DOM as the mapping and
the layout have; hovering a tap shows its name and partners; collapsing a block replaces its taps by
one block node, and expanding brings them back; a tap named like markup is shown as text. Screenshots go to docs/figures/. It speaks the Chrome
DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON messages ended by NUL on fds 3/4), so it
needs only the standard library and a Chromium (`apt-get install chromium`).

    python scripts/browser_check.py [--chromium PATH] [--out docs/figures]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pairgraph
from pairgraph.compiler.graph_layout import layout

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [("demo", "specs/rnn_from_transformer.yaml", ["mapping.kind=learned"]),
         ("resnet18_fcn", "specs/fcn_deep_from_resnet18.yaml", [])]


class Browser:
    """Headless Chromium driven over the DevTools pipe: one page, its events kept."""

    def __init__(self, chromium: str, profile: str):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # the pipe's ends become Chromium's fds 3 and 4 (via 10/11, so the two moves cannot collide)
        shell = f'exec 10<&{to_chrome_r} 11>&{from_chrome_w}; exec "$0" "$@" 3<&10 4>&11 10<&- 11>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", shell, chromium, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
             "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf, self._id, self.events, self.session = b"", 0, [], None
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 900, "deviceScaleFactor": 1,
                                                         "mobile": False})

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buf:
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        end = time.time() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.time() > end:
                raise RuntimeError(f"no {method} within {timeout:.0f} s")
            self.events.append(self._read())

    def js(self, expression: str) -> Any:
        out = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def mouse(self, kind: str, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails", {}))[:300])
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(json.dumps(p.get("args", []))[:300])
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", "")[:300])
        return out

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def centre(b: Browser, selector: str) -> tuple[float, float]:
    r = b.js(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
             " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    return float(r[0]), float(r[1])


def check_pair(b: Browser, name: str, spec: str, overrides: list[str], out: Path, work: Path) -> list[str]:
    cp = pairgraph.compile(ROOT / spec, work / name, overrides, notify=None)
    edges = len(layout(cp.guide).edges) + len(layout(cp.target).edges)
    b.events.clear()
    b.send("Page.navigate", {"url": (work / name / "mapping.html").resolve().as_uri()})
    b.wait_for("Page.loadEventFired")
    fails = []
    counts = b.js("[document.querySelectorAll('.tap').length, document.querySelectorAll('.map-edge').length,"
                  " document.querySelectorAll('.graph-edge').length]")
    want = [len(cp.guide) + len(cp.target), len(cp.correspondence), edges]
    if counts != want:
        fails.append(f"{name}: taps/mapping edges/graph edges in the DOM {counts}, expected {want}")
    b.send("Page.captureScreenshot")  # a first frame, so layout is done before the hover
    first = cp.guide.names[0]
    b.mouse("mouseMoved", *centre(b, f'.tap[data-name="{first}"][data-side="guide"]'))
    tip = b.js("[getComputedStyle(document.getElementById('tip')).display, document.getElementById('tip').textContent]")
    partner = cp.correspondence.pairs[0][1]
    if tip[0] != "block" or first not in tip[1] or partner not in tip[1]:
        fails.append(f"{name}: hovering {first} shows {tip!r}, expected its name and partner {partner}")
    shot = b.send("Page.captureScreenshot")["data"]
    (out / f"mapping_html_{name}.png").write_bytes(base64.b64decode(shot))
    b.mouse("mouseMoved", 5, 5)
    query = "conv" if name == "resnet18_fcn" else "blocks.1"
    hits = b.js(f"(() => {{ const s = document.getElementById('search'); s.value = {json.dumps(query)};"
                " s.dispatchEvent(new Event('input')); return document.querySelectorAll('.tap.hit').length; })()")
    expected_hits = sum(query in n for n in cp.guide.names + cp.target.names)
    if hits != expected_hits:
        fails.append(f"{name}: searching {query!r} marked {hits} taps, expected {expected_hits}")
    b.js("(() => { const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'));"
         " resetView(); })()")
    blocks = b.js("[...document.querySelectorAll('.block-head')].map(e => e.dataset.block)")
    if blocks:
        side, block = blocks[0].split(":", 1)
        members = sum(1 for n in (cp.guide if side == "guide" else cp.target).names if n.startswith(block + "."))
        x, y = centre(b, f'.block-head[data-block="{blocks[0]}"]')
        b.mouse("mousePressed", x, y)
        b.mouse("mouseReleased", x, y)
        after = b.js("[document.querySelectorAll('.tap').length, document.querySelectorAll('.block-node').length]")
        if after != [want[0] - members, 1]:
            fails.append(f"{name}: collapsing {blocks[0]} left {after} (taps, block nodes), expected "
                         f"{[want[0] - members, 1]}")
        (out / f"mapping_html_{name}_collapsed.png").write_bytes(base64.b64decode(b.send("Page.captureScreenshot")["data"]))
        b.js("document.getElementById('expand').click()")
        if b.js("document.querySelectorAll('.tap').length") != want[0]:
            fails.append(f"{name}: expanding every block did not bring back {want[0]} taps")
    elif name == "resnet18_fcn":
        fails.append(f"{name}: no block to collapse")
    fails += [f"{name}: console: {e}" for e in b.errors()]
    print(f"{name}: {counts[0]} taps, {counts[1]} mapping edges, {counts[2]} graph edges; hover, search and collapse "
          + ("ok" if not fails else "FAILED"))
    return fails


def check_hostile_names(b: Browser, work: Path) -> list[str]:
    """Tap names are module paths, and a ModuleDict key can be anything: the page must show them as text."""
    from pairgraph.compiler.mapping import Correspondence
    from pairgraph.compiler.mapping_html import mapping_page
    from pairgraph.core.layer_graph import TapPoint, finish_graph

    evil = "blocks.<img src=x onerror=console.error('injected')>"
    taps = [TapPoint(evil, "Linear", (2, 4)), TapPoint("out", "Linear", (2, 4))]
    g = finish_graph(taps, [(evil, "out")], "fx", None, [])
    page = work / "hostile.html"
    corr = Correspondence([(evil, "out", 1.0)], "uniform", g.names, g.names)
    training = {"threshold": 0.1, "pairs": [{"guide": evil, "target": "out", "steps": [1, 2], "values": [0.5, 0.05],
                                             "matched_at": 2}]}
    page.write_text(mapping_page(g, g, corr, evil, training))
    b.events.clear()
    b.send("Page.navigate", {"url": page.resolve().as_uri()})
    b.wait_for("Page.loadEventFired")
    b.mouse("mouseMoved", *centre(b, '.tap[data-side="guide"]'))
    tip = b.js("document.getElementById('tip').textContent")
    fails = [f"hostile names: console: {e}" for e in b.errors()]
    if b.js("document.querySelectorAll('img').length") != 0 or evil not in (tip or ""):
        fails.append(f"hostile names: a tap name became markup (tooltip {tip!r})")
    print("hostile tap names: shown as text " + ("ok" if not fails else "FAILED"))
    return fails


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    args = ap.parse_args()
    if not args.chromium:
        print("no chromium found: apt-get install -y chromium (make test-browser does)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    fails: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        b = Browser(args.chromium, str(Path(tmp) / "profile"))
        try:
            for name, spec, overrides in PAIRS:
                fails += check_pair(b, name, spec, overrides, args.out, Path(tmp))
            fails += check_hostile_names(b, Path(tmp))
        finally:
            b.close()
    for f in fails:
        print("FAIL", f, file=sys.stderr)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
