# `make test` and `make demo` build .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every optional integration: CI tests each with the real package.
EXTRAS := dev,postgres,dashboard,cmaes,lightning,transformers,timm,mlflow,export,browser

.PHONY: test chromium demo demo-noise equal-compute lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

# Debian's Chromium for the browser tests (tests/browser), installed when missing.
chromium:
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint chromium
	$(BIN)/pytest -q

# The main job on the offline digits task: search every method, evaluate, compare, report.
# One torch thread per trial: float sums then repeat on any machine, and so does the table.
DEMO_ENV := TETHER_NUM_THREADS=1

demo: $(STAMP)
	rm -f demo.db
	$(DEMO_ENV) $(BIN)/tether run studies/digits.yaml --storage sqlite:///demo.db --devices cpu --report demo-report.html

# Noisy labels: standard vs frob-pgm vs RSL at 20/40/60/80 % symmetric noise (README table).
demo-noise: $(STAMP)
	rm -f digits-noise.db
	$(DEMO_ENV) $(BIN)/tether run studies/digits-noise.yaml --storage sqlite:///digits-noise.db --devices cpu --report digits-noise-report.html

# Searched vs learned radii at equal compute (README): needs `make demo`'s demo.db, adds the
# warm-started MARS-PGM search, then re-tests every best-so-far configuration over 5 seeds.
equal-compute: $(STAMP)
	$(DEMO_ENV) $(BIN)/tether run studies/digits-cold.yaml --storage sqlite:///demo.db --devices cpu
	$(DEMO_ENV) $(BIN)/tether run studies/digits-warm.yaml --storage sqlite:///demo.db --devices cpu
	$(DEMO_ENV) $(BIN)/python -m benchmarks.equal_compute --storage sqlite:///demo.db --seeds 5

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
