# make figures : create/reuse .venv, execute every notebook with papermill, write paper_figures/
# make test    : create/reuse .venv, run the whole test suite (unit + notebook + browser tests)
# make test-fast : the unit tests only (no notebook, browser or slow test)
# make test-browser : only the tests that drive JupyterLab in headless Chromium
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# JupyterLab settings shipped with the environment: the .py sources open as notebooks, and no
# pop-up asks to fetch Jupyter news (nothing is fetched).
LAB_OVERRIDES := config/jupyterlab_overrides.json
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
PROFILE ?=
PROFILES := $(sort $(foreach f,$(wildcard notebooks/profiles/*.yaml),$(word 2,$(subst ., ,$(notdir $(f))))))

.PHONY: env figures test test-fast test-browser chromium sync gemma-n1024 smollm2-n1024 replication toy-spd seeds-paper benchmark benchmark-gemma benchmark-gemma-full benchmark-distributed benchmark-peers size-of-tests gpu-check clean

env: $(STAMP)

$(STAMP): pyproject.toml $(LAB_OVERRIDES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" > /dev/null
	install -D -m 644 $(LAB_OVERRIDES) $(VENV)/share/jupyter/lab/settings/overrides.d/entk_utils.json
	touch $(STAMP)

# Execute each notebook in place: its committed outputs are those of the default run.
# The .py source is pushed into the .ipynb first, so the outputs always belong to it.
# PROFILE=paper|gpu|quick runs with notebooks/profiles/<notebook>.<PROFILE>.yaml where one
# exists; the executed copies then go to .cache/executed/ and their figures and tables to
# .cache/out/<PROFILE>/ (unless the profile names an out_dir), so the committed notebooks and
# paper_figures/ stay the default run. Interactive runs write to .cache/out/.
# Every profile is checked first: a name its notebook does not declare (also inside the
# parameter dicts notebook 04 / 05 pass on) stops the run before it starts.
figures: $(STAMP)
	$(if $(PROFILE),$(if $(filter $(PROFILE),$(PROFILES)),,$(error no notebooks/profiles/*.$(PROFILE).yaml; profiles: $(PROFILES))))
	@[ -z "$(PROFILE)" ] || for nb in $(NOTEBOOKS); do \
	  prof=notebooks/profiles/$$(basename $$nb .ipynb).$(PROFILE).yaml; \
	  [ ! -f $$prof ] || $(PY) -m entk_utils.experiments.parameters check-profile $$nb $$prof || exit 1; \
	done
	@for nb in $(NOTEBOOKS); do \
	  name=$$(basename $$nb .ipynb); prof=notebooks/profiles/$$name.$(PROFILE).yaml; \
	  if [ -z "$(PROFILE)" ]; then \
	    echo "== $$name"; \
	    $(VENV)/bin/jupytext --quiet --update --to ipynb notebooks/$$name.py || exit 1; \
	    ENTK_OUT_DIR=../paper_figures $(PY) -m papermill --cwd notebooks -k python3 $$nb notebooks/.$$name.run.ipynb && mv notebooks/.$$name.run.ipynb $$nb || exit 1; \
	    $(PY) -m entk_utils.io.report --strip-widgets $$nb > /dev/null || exit 1; \
	    $(VENV)/bin/jupytext --sync --quiet $$nb || exit 1; \
	  else \
	    args=""; [ -f $$prof ] && args="-f $$prof"; mkdir -p .cache/executed; \
	    echo "== $$name $$args"; \
	    ENTK_OUT_DIR=../.cache/out/$(PROFILE) $(PY) -m papermill --cwd notebooks -k python3 $$args $$nb .cache/executed/$$name.$(PROFILE).ipynb || exit 1; \
	  fi; \
	done
	@[ -n "$(PROFILE)" ] || $(PY) -m entk_utils.io.report
	@echo "figures and tables written to paper_figures/"

# Every notebook runs once: nbval re-executes the committed notebooks with their defaults
# (comparing the cells marked NBVAL_CHECK_OUTPUT); tests/test_notebooks.py runs 04 and 06,
# which nbval skips, with their quick profiles. The suite runs on TEST_WORKERS processes
# (pytest-xdist), each test file and each notebook whole on one of them, the longest first
# (conftest.py), each with one torch thread (two workers of two threads on two cores made
# small computations many times slower: idle threads spin); the slowest tests are listed at
# the end.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -p no:cacheprovider
test: $(STAMP) chromium
	$(PYTEST) tests notebooks --nbval-lax $(XDIST) --durations=15

# Unit tests only (no notebook, browser or slow test): under two minutes.
test-fast: $(STAMP)
	$(PYTEST) tests -m "not notebook and not browser and not slow" $(XDIST) --durations=5

test-browser: $(STAMP) chromium
	$(PYTEST) tests -m browser

# The browser tests drive Debian's chromium package. Install it where we can (as root, with
# apt-get); where we cannot, those tests skip themselves and say why.
chromium:
	@command -v chromium > /dev/null || { \
	  [ "$$(id -u 2> /dev/null)" = 0 ] && command -v apt-get > /dev/null && echo "installing chromium (apt-get)" && { \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null; }; \
	  } || echo "chromium could not be installed (needs root and apt-get): the browser tests will be skipped"; }

sync: $(STAMP)
	$(VENV)/bin/jupytext --sync notebooks/[0-9][0-9]_*.py

# $(call profile-run,NOTEBOOK,PROFILE,FOLDER): one notebook with one of its profiles, its
# tables and figures in paper_figures/FOLDER/ with the executed notebook beside them, then the
# documents' regions refreshed.
define profile-run
	$(PY) -m entk_utils.experiments.parameters check-profile notebooks/$(1).ipynb notebooks/profiles/$(1).$(2).yaml
	mkdir -p paper_figures/$(3)
	$(PY) -m papermill --cwd notebooks -k python3 -f notebooks/profiles/$(1).$(2).yaml \
	  notebooks/$(1).ipynb paper_figures/$(3)/$(1).ipynb
	$(PY) -m entk_utils.io.report --strip-widgets paper_figures/$(3)/$(1).ipynb > /dev/null
	$(PY) -m entk_utils.io.report
endef

# The finder comparisons of the two N = 1024 runs of notebook 03 in one table (a run not made
# yet is left out), then the documents' regions refreshed.
define side-by-side
	$(PY) -m entk_utils.experiments.replication side-by-side paper_figures/replication/table8_models \
	  "Gemma-3-270M, layer 16=paper_figures/gemma_n1024_layer16" \
	  "SmolLM2-135M-Instruct, layer 27=paper_figures/smollm2_n1024_layer27"
	$(PY) -m entk_utils.io.report
endef

# Notebook 03 at the paper's N = 1024, layer 16 only (about an hour on a 2-core CPU).
gemma-n1024: $(STAMP)
	$(call profile-run,03_gemma_tinystories,paper16,gemma_n1024_layer16)
	$(side-by-side)

# Notebook 03's pipeline on SmolLM2-135M-Instruct at N = 1024, layer 27 of 30 (about an
# hour on a 2-core CPU; 19 minutes of it the eigenpairs).
smollm2-n1024: $(STAMP)
	$(call profile-run,03_gemma_tinystories,smollm2,smollm2_n1024_layer27)
	$(side-by-side)

# Notebook 08 with its paper profile: Table 3 over every layer for Gemma and SmolLM2 at N = 1024,
# the tagger and quantisation probes (after gemma-n1024 and smollm2-n1024, whose contexts and
# eigenpairs it reads from the cache; about 40 minutes on a 2-core CPU).
replication: $(STAMP)
	$(call profile-run,08_does_it_hold,paper,replication)

# Notebook 07 with its spd profile: SPD's recipe on 5-2 and 40-10, five seeds (about an
# hour on a 2-core CPU).
toy-spd: $(STAMP)
	$(call profile-run,07_toy_superposition,spd,toy_spd)

# Notebook 04 with its paper profile: 10 Transformer seeds under each split policy and a 7 x 4
# split x init grid (a few hours on a 2-core CPU, resumable); its tables and figures go to
# paper_figures/seeds_paper/, the executed notebook beside them.
seeds-paper: $(STAMP)
	$(PY) -m entk_utils.experiments.parameters check-profile notebooks/04_seeds.ipynb notebooks/profiles/04_seeds.paper.yaml
	mkdir -p paper_figures/seeds_paper
	$(PY) -m papermill --cwd notebooks -k python3 -f notebooks/profiles/04_seeds.paper.yaml \
	  notebooks/04_seeds.ipynb paper_figures/seeds_paper/04_seeds.ipynb
	$(PY) -m entk_utils.io.report --strip-widgets paper_figures/seeds_paper/04_seeds.ipynb > /dev/null
	$(PY) -m entk_utils.io.report

benchmark: $(STAMP)
	$(PY) benchmarks/bench_entk.py

# Gemma operator: full-model vs truncated matvec at layers 0, 8, 16 (about 7 minutes);
# the -full variant times 25 eigenpairs at layer 16 with N = 1024.
benchmark-gemma: $(STAMP)
	$(PY) benchmarks/bench_operators.py --n-contexts 64

benchmark-gemma-full: $(STAMP)
	$(PY) benchmarks/bench_operators.py --n-contexts 1024 --layers --eigs 25 --steps 50 --layer 16

# The data-parallel operator: 1 process x 2 threads vs 2 processes x 1 thread at layer 16,
# N = 64, per-layer costs, and a labelled projection of the paper profile on GPUs (about 10 minutes).
benchmark-distributed: $(STAMP)
	$(PY) benchmarks/bench_distributed.py

# neural-tangents against the fast eNTK (about 5 minutes on an idle 2-core CPU). JAX and
# TensorFlow are not the project's dependencies: they live in .venv-peers, built from
# benchmarks/peers/requirements.txt with the project itself (rebuilt when either file changes).
PEERS_VENV := .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
PEERS_REQUIREMENTS := benchmarks/peers/requirements.txt
PEERS_STAMP := $(PEERS_VENV)/.installed

$(PEERS_STAMP): $(PEERS_REQUIREMENTS) pyproject.toml
	test -x $(PEERS_PY) || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_PY) -m pip install --quiet --upgrade pip
	$(PEERS_PY) -m pip install --quiet -r $(PEERS_REQUIREMENTS) -e .
	$(PEERS_PY) -m pip check
	touch $(PEERS_STAMP)

benchmark-peers: $(PEERS_STAMP)
	$(PEERS_PY) benchmarks/bench_peers.py

# The comparisons' tests on planted data: how often each rejects "two equally good methods are
# equally good" (at most 5% is right), how often it finds a real gap, the intervals' coverage,
# and the share of explanations validated as the contexts grow (about 15 minutes); results in
# benchmarks/results/size_of_tests.md and the README.
size-of-tests: $(STAMP)
	$(PY) benchmarks/size_of_tests.py

# For a lent GPU machine, in one call of under 10 minutes: the dense eNTK and the operator on CUDA
# against the CPU, python -m entk_utils.eigs under torchrun with NCCL on every GPU, and the
# N = 1024 layer-16 top-25 time; results in benchmarks/results/gpu_check.md and the README.
# Without CUDA it says so and exits 0.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf .cache
