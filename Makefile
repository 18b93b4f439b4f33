# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
REPO   ?= model_repo

.PHONY: setup demo test gpu-check lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# Export the embedded MiniLM in FP32 and quantized W6A6 (Outlier Suppression), verify each
# against PyTorch; then serve both with a local Triton, query them over gRPC, verify and
# bench Triton, and stop the server.
demo: setup
	$(BIN)/tritonforge export bert --bits 32 --repo $(REPO)
	$(BIN)/tritonforge verify bert_fp32 --repo $(REPO) --json $(REPO)/bert_fp32.verify.json
	$(BIN)/tritonforge export bert --bits 6 --repo $(REPO)
	$(BIN)/tritonforge verify bert_w6a6 --repo $(REPO) --json $(REPO)/bert_w6a6.verify.json
	$(BIN)/tritonforge ls --repo $(REPO)
	bash scripts/demo-serving.sh $(BIN) $(REPO)

test: setup
	$(BIN)/python -m pytest -q

# On a CUDA host: parity and latency with the CUDA and TensorRT execution providers and FP16.
gpu-check: setup
	$(BIN)/python -m pytest -q -m gpu tests/test_gpu.py

lint: setup
	$(BIN)/ruff check tritonforge tests

clean:
	rm -rf $(VENV) $(REPO)/*/
