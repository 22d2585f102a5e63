# Every target works on a fresh machine with Python 3 and a C compiler.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Two stamps: what running needs (`make up`), and the test and lint tools on top of it
# (`make test`, `lint`, `bench`, `fuzz`, `install`).
RUNTIME_STAMP := $(VENV)/.speeddata-runtime
DEV_STAMP := $(VENV)/.speeddata-dev
SOURCES := $(wildcard pyproject.toml setup.py src/speeddata/*.pyx src/speeddata/*.pxd)
BUILD_REQUIRES := "setuptools>=77" "wheel" "Cython>=3.0.8" "numpy>=1.24"

.PHONY: up test bench lint fuzz clean install

define DEV_REQUIREMENTS
import sys
toml = __import__("tomllib" if sys.version_info >= (3, 11) else "tomli")
with open("pyproject.toml", "rb") as f:
    extras = toml.load(f)["project"]["optional-dependencies"]
for requirement in dict.fromkeys(extras["test"] + extras["lint"]):
    print(requirement)
endef
export DEV_REQUIREMENTS

install: $(DEV_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Build requirements go into the venv so rebuilds need no network and no isolation copy.
$(RUNTIME_STAMP): $(PY) $(SOURCES)
	$(PIP) install $(BUILD_REQUIRES)
	$(PIP) install --no-build-isolation -e .
	touch $(RUNTIME_STAMP)

# The extras [test,lint] of pyproject.toml, without building SpeedData a second time
# (pip rebuilds an editable install of ".[test,lint]" from scratch).
$(DEV_STAMP): $(RUNTIME_STAMP)
	$(PY) -c "$$DEV_REQUIREMENTS" > $(VENV)/dev-requirements.txt
	$(PIP) install -r $(VENV)/dev-requirements.txt
	touch $(DEV_STAMP)

up: $(RUNTIME_STAMP)
	$(VENV)/bin/speeddata up --demo

test: $(DEV_STAMP)
	$(PY) -m pytest tests

# The fault suite (tests/faults, docs/reliability.md) in its long mode: more kills, rounds,
# datagrams and hypothesis examples; FUZZ_RUNS=N repeats it with a new seed each time
# (SPEEDDATA_FUZZ_SEED=S replays one run's random choices).
FUZZ_RUNS ?= 1
fuzz: $(DEV_STAMP)
	for i in $$(seq $(FUZZ_RUNS)); do \
		SPEEDDATA_FUZZ=1 SPEEDDATA_FUZZ_EXAMPLES=$${SPEEDDATA_FUZZ_EXAMPLES:-3000} \
		$(PY) -m pytest tests/faults -p no:cacheprovider -o timeout=3600 || exit 1; \
	done

bench: $(DEV_STAMP)
	$(PY) -m pytest benchmarks --benchmark-columns=min,mean,ops,rounds

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/cython-lint src/speeddata src/speeddata/includes
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf build dist src/*.egg-info src/speeddata/*.so src/speeddata/_*.c .pytest_cache .benchmarks
