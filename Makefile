# trtllm-forge — everything a fresh machine needs goes through these targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: venv demo test test-slow test-reliability test-latest lint typecheck bench bench-quick data clean lock lock-check

$(BIN)/forge: pyproject.toml requirements/lock.txt $(wildcard plugins/*/pyproject.toml)
	$(PY) -m venv $(VENV)
	# Exactly the tested set (requirements/lock.txt, hashes checked), then forge itself.
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements/lock.txt
	$(BIN)/pip install -q --no-deps -e .
	# First-party plugin packages (plugins/*/pyproject.toml); their dependencies are in the lock.
	for plugin in plugins/*/pyproject.toml; do [ -e "$$plugin" ] || continue; \
	  $(BIN)/pip install -q --no-deps -e "$$(dirname $$plugin)" || exit 1; done
	# Byte-compile forge's sources now: where PYTHONDONTWRITEBYTECODE is set, every CLI
	# start would otherwise recompile them (about 0.1 s of a 0.3 s no-op build).
	$(BIN)/python -m compileall -q trtllm_forge
	# pip check, except the tensorrt-stubs line below (its tensorrt cannot install here).
	$(BIN)/pip check | grep -v -e '^tensorrt-stubs .* requires tensorrt' -e '^No broken' | { ! grep .; }
	# tensorrt-stubs depends on tensorrt, which only installs from NVIDIA's index.
	$(BIN)/pip install -q --no-deps tensorrt-stubs==10.13.0.35.1
	touch $(BIN)/forge

venv: $(BIN)/forge

# Regenerate requirements/lock.txt after changing pyproject.toml's dependencies: pins already
# in the lock are kept unless UPGRADE=1 (then every package moves to its newest release that
# pyproject.toml allows). Run `make test` on the result before committing it.
LOCK_FLAGS := --extra dev --strip-extras --allow-unsafe --generate-hashes --no-emit-index-url --no-emit-find-links
lock: venv
	$(BIN)/pip-compile -q $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) -o requirements/lock.txt pyproject.toml requirements/torch-cpu.in
	$(BIN)/python requirements/tested_versions.py

# Two fresh venvs from the lock must freeze identically (the lock pins everything).
lock-check:
	requirements/freeze_twice.sh $(PY)

# The default tier against the newest releases of every dependency, ignoring the lock and
# pyproject's upper bounds, in a throwaway venv: drift found on purpose (docs/dependencies.md).
LATEST ?= .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q torch==2.13.0
	$(LATEST)/bin/pip install -q --upgrade $$($(PY) requirements/unpinned.py)
	$(LATEST)/bin/pip install -q --no-deps -e .
	$(LATEST)/bin/pip install -q --no-deps tensorrt-stubs==10.13.0.35.1
	$(PY) requirements/unpinned.py --drift $(LATEST)/bin/python | tee $(LATEST)/drift.txt
	$(LATEST)/bin/python -m pytest -q -m "not slow and not reliability" -n 2 -p no:cacheprovider

demo: venv
	$(BIN)/python recipes/tiny/make_models.py
	@echo "== forge build: fetch → convert → calibrate → build (ONNX Runtime) → verify"
	$(BIN)/forge build recipes/tiny-llama.yaml
	@echo "== the same build again: every stage is a cache hit"
	$(BIN)/forge build recipes/tiny-llama.yaml
	@echo "== what the engine is"
	$(BIN)/forge inspect $$($(BIN)/forge build recipes/tiny-llama.yaml --json -q | $(BIN)/python -c 'import json,sys; print([s["path"] for s in json.load(sys.stdin)["stages"] if s["stage"]=="build"][0])')

test: venv
	$(BIN)/python -m pytest -q -m "not slow and not reliability" -n 2
	$(MAKE) lint

test-slow: venv data
	$(BIN)/python -m pytest -q -m slow

test-reliability: venv
	$(BIN)/python -m pytest -q -m reliability

lint: venv
	$(BIN)/ruff check trtllm_forge tests bench requirements plugins tools
	$(BIN)/ruff format --check trtllm_forge tests bench requirements plugins tools
	# No import cycles, no upward imports between the layers it declares, no import by string.
	$(BIN)/python tools/import_layers.py

# The TensorRT backend, mypy --strict against tensorrt-stubs (the test sanitizes the
# stubs' syntax errors first; see tests/test_engine_backends.py). `make test` runs it too.
typecheck: venv
	$(BIN)/python -m pytest -q tests/test_engine_backends.py -k type_checks

data: venv
	$(BIN)/python -m bench.data --hf-dir

bench: venv data
	$(BIN)/python -m bench

bench-quick: venv
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .forge-demo .pytest_cache .mypy_cache .ruff_cache
