# make figures : create/reuse .venv, execute every notebook with papermill, write paper_figures/
# make test    : create/reuse .venv, run the whole test suite (unit + notebook tests)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
PROFILE ?=

.PHONY: env figures test sync benchmark clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Execute each notebook in place (its committed outputs are those of this run).
# PROFILE=paper (or gpu) runs with notebooks/profiles/<notebook>.<PROFILE>.yaml where one exists.
figures: $(STAMP)
	@for nb in $(NOTEBOOKS); do \
	  name=$$(basename $$nb .ipynb); prof=notebooks/profiles/$$name.$(PROFILE).yaml; \
	  args=""; if [ -n "$(PROFILE)" ] && [ -f $$prof ]; then args="-f $$prof"; fi; \
	  echo "== $$name $$args"; \
	  $(PY) -m papermill --cwd notebooks -k python3 $$args $$nb $$nb.tmp && mv $$nb.tmp $$nb || exit 1; \
	  $(VENV)/bin/jupytext --sync --quiet $$nb || exit 1; \
	done
	@echo "figures and tables written to paper_figures/"

test: $(STAMP)
	$(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider

sync: $(STAMP)
	$(VENV)/bin/jupytext --sync notebooks/[0-9][0-9]_*.py

benchmark: $(STAMP)
	$(PY) benchmarks/bench_entk.py

clean:
	rm -rf .cache
