# Two entry points: `make demo` (the main job on the built-in dataset) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATA := data/shapes
RUN := runs/demo
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test install data train evaluate caption clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

$(DATA)/test.json: | $(VENV)/.installed
	$(BIN)/captioner data shapes --out $(DATA)

data: $(DATA)/test.json

train: data
	$(BIN)/captioner train --data-dir $(DATA) --run $(RUN)

evaluate:
	$(BIN)/captioner evaluate --run $(RUN) --split test --out $(RUN)/test_captions.json

caption:
	$(BIN)/captioner caption --run $(RUN) $(DATA)/images/test_0000[0-5].png

# install, generate shapes, train Show-and-Tell, score BLEU on the test split, caption six test images
demo: install data train evaluate caption

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(RUN) $(DATA)
