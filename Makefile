# Every target works on a fresh machine with Python 3 and a C compiler.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.speeddata-installed
SOURCES := $(wildcard pyproject.toml setup.py src/speeddata/*.pyx src/speeddata/*.pxd)

.PHONY: up test bench lint fuzz clean install

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Build requirements go into the venv so rebuilds need no network and no isolation copy.
$(STAMP): $(PY) $(SOURCES)
	$(PIP) install "setuptools>=77" "wheel" "Cython>=3.0.8" "numpy>=1.24"
	$(PIP) install --no-build-isolation -e ".[test,lint]"
	touch $(STAMP)

up: $(STAMP)
	$(VENV)/bin/speeddata up --demo

test: $(STAMP)
	$(PY) -m pytest tests

# The fault suite (tests/faults, docs/reliability.md) in its long mode: more kills, rounds,
# datagrams and hypothesis examples; FUZZ_RUNS=N repeats it with a new seed each time
# (SPEEDDATA_FUZZ_SEED=S replays one run's random choices).
FUZZ_RUNS ?= 1
fuzz: $(STAMP)
	for i in $$(seq $(FUZZ_RUNS)); do \
		SPEEDDATA_FUZZ=1 SPEEDDATA_FUZZ_EXAMPLES=$${SPEEDDATA_FUZZ_EXAMPLES:-3000} \
		$(PY) -m pytest tests/faults -p no:cacheprovider -o timeout=3600 || exit 1; \
	done

bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-columns=min,mean,ops,rounds

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/cython-lint src/speeddata src/speeddata/includes
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf build dist src/*.egg-info src/speeddata/*.so src/speeddata/_*.c .pytest_cache .benchmarks
