# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.t2i-installed

# Coverage of the t2i package, lines and branches, printed after the tests (docs/testing.md).
COV ?= --cov=t2i --cov-branch --cov-report=term

.PHONY: install demo test lint mutation clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch 2.14.1 / torchvision 0.29.1 come from this machine kind's local disk; pin them so pip never
	# reaches for a different build.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/t2i demo

test: $(STAMP)
	$(BIN)/pytest -q $(COV)

# Mutation testing (mutmut; config in pyproject.toml). Not in CI: hours for every module. One module, e.g.
#   PYTEST_ADDOPTS='-k ema' make mutation MUTANTS='t2i.train.ema*'
# (MUTANTS: mutant-name globs; PYTEST_ADDOPTS narrows the tests run once to map tests to functions). See docs/testing.md.
MUTANTS ?=
export T2I_GOLDEN ?= $(abspath ../shared/golden)

mutation: $(STAMP)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[mutation]'
	OMP_NUM_THREADS=1 $(BIN)/mutmut run $(MUTANTS)
	$(BIN)/mutmut results

lint: $(STAMP)
	$(BIN)/ruff check t2i tests benchmarks
	$(BIN)/ruff format --check t2i tests benchmarks

clean-venv:
	rm -rf $(VENV)
