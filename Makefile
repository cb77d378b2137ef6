# Two entry points: `make demo` (install, train + evaluate the default config) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/default

.PHONY: install demo test

$(VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) train.py --config=configs/default.py --workdir=$(WORKDIR)
	$(PY) eval.py --config=configs/default.py --workdir=$(WORKDIR)
	@echo "Report: $(WORKDIR)/eval/report.json  Gallery: $(WORKDIR)/eval/gallery.png"

test: install
	$(PY) -m pytest -q tests
