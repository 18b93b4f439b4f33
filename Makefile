# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
REPO   ?= model_repo

.PHONY: setup demo emt test test-no-bf16 gpu-check lint clean perf-analyzer

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# Export the embedded MiniLM at full quality in the fastest precision this CPU runs (BF16 on
# OpenVINO where the CPU has AVX512_BF16 or AMX, else FP32) and quantized W6A6 (Outlier
# Suppression), verify each against PyTorch; then serve both with a local Triton, query them
# over gRPC, verify Triton, bench both side by side, and stop the server.
FULL_BITS = $(shell $(BIN)/python -c 'from tritonforge.runtime import cpu_has_bf16; print(16 if cpu_has_bf16() else 32)')
FULL_NAME = bert_$(if $(filter 16,$(FULL_BITS)),bf16,fp32)
demo: setup
	$(BIN)/tritonforge export bert --bits $(FULL_BITS) --repo $(REPO)
	$(BIN)/tritonforge verify $(FULL_NAME) --repo $(REPO) --json $(REPO)/$(FULL_NAME).verify.json
	$(BIN)/tritonforge export bert --bits 6 --repo $(REPO)
	$(BIN)/tritonforge verify bert_w6a6 --repo $(REPO) --json $(REPO)/bert_w6a6.verify.json
	$(BIN)/tritonforge ls --repo $(REPO)
	bash scripts/demo-serving.sh $(BIN) $(REPO) $(FULL_NAME)

# EMT neural video delivery on the demo clip (scripts/demo-emt.sh): meta-train ESPCN x2, tune
# each 5-s chunk into version k of emt_demo, serve, play the clip through Triton, bench frames.
emt: setup
	bash scripts/demo-emt.sh $(BIN) $(REPO)

# perf_analyzer is installed first (as `make perf-analyzer`), so `bench --perf-analyzer` is
# tested; where that is impossible (no apt, no network) its tests skip with the reason, which
# is kept in $(VENV)/perf_analyzer.failed.
test: setup
	@$(MAKE) --no-print-directory perf-analyzer > $(VENV)/perf_analyzer.log 2>&1 \
		&& rm -f $(VENV)/perf_analyzer.failed \
		|| { tail -n 3 $(VENV)/perf_analyzer.log > $(VENV)/perf_analyzer.failed; \
		     echo "perf_analyzer could not be installed; its tests will skip:"; cat $(VENV)/perf_analyzer.failed; }
	$(BIN)/python -m pytest -q

# The suite as on a CPU without AVX512_BF16 or AMX (runtime.cpu_has_bf16 honours the switch):
# BF16 exports are refused or fall back, and BF16 tests skip with the reason.
test-no-bf16: setup
	TRITONFORGE_NO_BF16=1 $(BIN)/python -m pytest -q -rs

# Every figure of the docs, measured in one run on this machine (16 min on a quiet 2-core EPYC):
# docs/benchmarks.md with the machine, commit, date and versions, and per table the command that
# reproduces it alone (`tritonforge report --only SECTION`; `--quick` measures a part in minutes).
.PHONY: benchmarks
benchmarks: setup
	$(BIN)/tritonforge report --out docs/benchmarks.md

# On a CUDA host: parity and latency with the CUDA and TensorRT execution providers and FP16.
gpu-check: setup
	$(BIN)/python -m pytest -q -m gpu tests/test_gpu.py

# Triton's own load generator, for `bench --perf-analyzer`: the perf_analyzer binary of the
# tritonclient 2.50 wheel (later wheels no longer ship it) with the two libraries it links,
# Debian's libb64 and the CUDA runtime wheel's libcudart.so.12, all under $(VENV)/perf_analyzer;
# $(BIN)/perf_analyzer is a wrapper that points LD_LIBRARY_PATH there. The venv's tritonclient
# is left as it is. Needs no root: `apt-get download` only fetches the .deb.
PA_DIR := $(VENV)/perf_analyzer

perf-analyzer: $(BIN)/perf_analyzer

$(BIN)/perf_analyzer: | $(VENV)/.installed
	rm -rf $(PA_DIR) && mkdir -p $(PA_DIR)/bin $(PA_DIR)/lib $(PA_DIR)/download
	$(BIN)/python -m pip download --quiet --no-deps --dest $(PA_DIR)/download \
		tritonclient==2.50.0 nvidia-cuda-runtime-cu12==12.9.79
	cd $(PA_DIR)/download && { apt-get download libb64-0d \
		|| { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download libb64-0d; }; } || { \
		echo "apt-get download libb64-0d failed: run apt-get update (or install libb64-0d)"; exit 1; }
	cd $(PA_DIR)/download && for wheel in *.whl; do ../../bin/python -m zipfile -e $$wheel wheels; done
	cp $(PA_DIR)/download/wheels/tritonclient-2.50.0.data/data/bin/perf_analyzer $(PA_DIR)/bin/
	cp $(PA_DIR)/download/wheels/nvidia/cuda_runtime/lib/libcudart.so.12 $(PA_DIR)/lib/
	dpkg -x $(PA_DIR)/download/libb64-0d_*.deb $(PA_DIR)/download/libb64
	cp $(PA_DIR)/download/libb64/usr/lib/*/libb64.so.0d $(PA_DIR)/lib/
	rm -rf $(PA_DIR)/download
	chmod +x $(PA_DIR)/bin/perf_analyzer
	printf '#!/bin/sh\nhere=$$(dirname "$$(readlink -f "$$0")")/../perf_analyzer\nLD_LIBRARY_PATH="$$here/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}" exec "$$here/bin/perf_analyzer" "$$@"\n' > $@.tmp
	chmod +x $@.tmp && mv $@.tmp $@
	$@ --version

lint: setup
	$(BIN)/ruff check tritonforge tests

clean:
	rm -rf $(VENV) $(REPO)/*/ emt_demo
