# pairgraph — two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SPEC ?= specs/rnn_from_transformer.yaml
# The torch build these machines hold offline; pyproject.toml states the compatible ranges.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-all test-browser lint bench bench-ops gpu-check clean

$(BIN)/pairgraph: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/pairgraph

install: $(BIN)/pairgraph

# the default pair trained alone and guided, side by side: a table, runs/demo/curves.png, runs/demo/mapping.png
demo: install
	$(BIN)/pairgraph demo $(SPEC)

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ""

# mapping.html in a real browser (issue #31): Debian's chromium is installed when missing (root and the network,
# once), then headless Chromium opens the page of the demo pair and of ResNet-18 → Deep FCN from a file URL and
# checks it (scripts/browser_check.py); screenshots into docs/figures/mapping_html_*.png
test-browser: install
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
	$(BIN)/python scripts/browser_check.py

# ruff, then the structure: import-linter's layers contract, no import cycle, module/function sizes
lint: install
	$(BIN)/ruff check pairgraph zoo cli tests scripts
	$(BIN)/python scripts/check_layout.py

# Guidance cost against its floors (issues #7, #21): CPU, fp32, batch 256, with the gram floor (g); tables by
# batch size and by pairs; then similarity.precision fp32 | tf32 | bf16 on both pairs (scripts/gram_precision.py).
BENCH_SIZES ?= 64,128,256,512,1024
# ATen ops and host syncs per step (no timing: fine on a busy machine), batch 64
bench-ops: install
	mkdir -p results/bench
	$(BIN)/pairgraph bench specs/fcn_deep_from_resnet18.yaml --set target.args.width=1024 --ops-only --batch-size 64 \
		--cache-pool 1024 --pairs 1,5,10,20,40 -o results/bench/fcn_deep_1024_from_resnet18-cpu-ops.json
	$(BIN)/pairgraph bench specs/rnn_from_transformer.yaml --ops-only --batch-size 64 --cache-pool 1024 --pairs 1,2,4 \
		-o results/bench/rnn_from_transformer-cpu-ops.json

bench: install bench-ops
	mkdir -p results/bench
	$(BIN)/pairgraph bench specs/fcn_deep_from_resnet18.yaml --set target.args.width=1024 --cache-pool 1024 \
		--batch-sizes $(BENCH_SIZES) --pairs 1,5,10,20,40 -o results/bench/fcn_deep_1024_from_resnet18-cpu.json
	$(BIN)/pairgraph bench specs/rnn_from_transformer.yaml --cache-pool 1024 \
		--batch-sizes $(BENCH_SIZES) --pairs 1,2,3,4 -o results/bench/rnn_from_transformer-cpu.json
	$(BIN)/pairgraph bench specs/fcn_deep_from_resnet18.yaml --set target.args.width=1024 --compile --no-memory \
		-o results/bench/fcn_deep_1024_from_resnet18-cpu-compiled.json
	$(BIN)/pairgraph bench specs/rnn_from_transformer.yaml --compile --no-memory \
		-o results/bench/rnn_from_transformer-cpu-compiled.json
	$(BIN)/pairgraph bench specs/fcn_deep_from_resnet18.yaml --set target.args.width=1024 --channels-last --no-memory \
		--cache-pool 1024 -o results/bench/fcn_deep_1024_from_resnet18-cpu-channels-last.json
	$(BIN)/pairgraph bench specs/fcn_deep_from_resnet18.yaml --set target.args.width=1024 --set similarity.precision=bf16 \
		--cache-pool 1024 --no-memory -o results/bench/fcn_deep_1024_from_resnet18-cpu-bf16-grams.json
	$(BIN)/python scripts/gram_precision.py --device cpu -o results/bench/gram_precision-cpu.json
	$(BIN)/python scripts/bench_report.py results/bench docs/performance.md

# On a machine with an NVIDIA GPU (never required), sized for about 9 minutes on an H200 (docs/gpu.md has the
# estimate), issue #28 item 5's targets first: the benchmark on the GPU (networks fp32 and bf16, cache on), the
# paper-size throughput (50 x 2048 and the authors' layout), one step of each pair under torch.profiler (kernels,
# device idle time), train.compile's modes (eager / default / reduce-overhead, first step apart), then CPU-vs-GPU
# agreement, similarity.precision, the device tests and the `gpu`-marked ones, short fp32/bf16 training runs; it
# ends with each item-5 target met or missed by how much (scripts/gpu_targets.py). The summary in results/gpu/,
# the benchmark records in results/bench/*-cuda*.json (then `python scripts/bench_report.py results/bench
# docs/performance.md`). Smoke test on a CPU: `python scripts/gpu_check.py --quick --device cpu --out /tmp/gc`.
# GPU_PY: a Python with torch for that GPU (the Makefile's CPU venv is not).
GPU_PY ?= python3
gpu-check:
	$(GPU_PY) scripts/gpu_check.py --out results/gpu --bench-out results/bench

clean:
	rm -rf build runs .pytest_cache
