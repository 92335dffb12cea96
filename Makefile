# The README's two commands: `make demo` (the main job end to end) and `make test` (the suite).
# Both create .venv/ at the repo root when it is missing and reuse it otherwise.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALL := $(BIN)/pip --disable-pip-version-check --quiet install
STAMP := $(VENV)/.erl_plugin_installed
SPLITS := datasets/rain_generalization/synthesis.json

.PHONY: demo test lint venv

venv: $(STAMP)

# torch and torchvision come from the machine's local disk; basicsr 1.4.2 is an sdist whose
# isolated build would install torch again (minutes, gigabytes): build it against ours instead.
$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(INSTALL) torch==2.14.1 torchvision==0.29.1
	$(INSTALL) "setuptools>=70.1" wheel
	$(INSTALL) --no-build-isolation basicsr==1.4.2
	$(INSTALL) --no-build-isolation -e ".[test]"
	touch $(STAMP)

# The demo follows docs/study.md: ERL-Net and MEMD (equal iterations) trained at once on rain rendered
# on the fly, scored on the generalization test split. A second run reuses the finished runs.
demo: $(STAMP) $(SPLITS)
	$(BIN)/python tools/study.py options/study/demo.yml --min-gain-db 1
	@echo "Next: source $(VENV)/bin/activate, then erl-train, erl-derain, ... (README.md)"

$(SPLITS): | $(STAMP)
	$(BIN)/python tools/synthesize_rain.py --generalization --out $(dir $(SPLITS)) --no-progress

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# One pytest worker per core (pytest-xdist); each test process forks its subprocesses from a warm
# interpreter (tests/warm_python.py). `pytest -n 0` runs in one process, for debugging.
test: lint
	$(BIN)/python -m pytest -n auto
