# The README's two commands: `make demo` (the main job end to end) and `make test` (the suite).
# Both create .venv/ at the repo root when it is missing and reuse it otherwise.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check --quiet
STAMP := $(VENV)/.erl_plugin_installed
DEMO_DATA := datasets/synthetic_rain

.PHONY: demo test lint venv

venv: $(STAMP)

# torch and torchvision come from the machine's local disk; basicsr 1.4.2 is an sdist whose
# isolated build would install torch again (minutes, gigabytes): build it against ours instead.
$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install "setuptools>=70.1" wheel
	$(PIP) install --no-build-isolation basicsr==1.4.2
	$(PIP) install --no-build-isolation -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python tools/synthesize_rain.py --out $(DEMO_DATA) --preset heavy --seed 0 --lmdb --overwrite \
		--patches-per-image 12 --variants-per-patch 2
	$(BIN)/erl-train -opt options/erl_demo.yml
	$(BIN)/python tools/evaluate.py --data $(DEMO_DATA)/test --out results/demo --min-gain-db 3 \
		--model MEMD options/erl_demo.yml experiments/erl_demo/models/memd_stage1.pth \
		--model ERL-Net options/erl_demo.yml experiments/erl_demo/models/net_g_latest.pth

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest
