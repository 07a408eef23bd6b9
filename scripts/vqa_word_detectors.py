"""Experiment (not yet in the product): do word detectors learned from Flickr8k captions help yes/no VQA on unseen photos?

1. On the cached MobileNetV2 grids of Flickr8k's train photos, a multi-label logistic layer predicts which
   caption words (count >= 5, stop words out) appear in a photo's five captions.
2. The VQA model (the vqa-coco recipe's shape) reads, with each question word, that word's detector logit on the
   photo (0 and a flag where the word has no detector).
Both arms (with and without the detector inputs) trained the same way; dev/test accuracy overall, seen, unseen.
Needs both datasets' MobileNetV2 grids in one feature cache (`captioner features --dataset flickr8k ...` and
`--dataset vqa-lines ...` with the same --cache-dir). BENCHMARKS.md, "VQA on photographs", has its numbers.

    python scripts/vqa_word_detectors.py --cache-dir C --weights W --flickr8k F8K_DIR --vqa VQA_DIR [--seed 0] [--arms plain,detector]
"""
import argparse
import collections
import json
from pathlib import Path

import numpy as np
import keras
from keras import layers, ops

from captioner.config import ModelConfig
from captioner.data import load_qa_split, load_split
from captioner.models.features import FeatureCache
from captioner.models.networks import build_image_encoder
from captioner.data.vocab import tokenize

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cache-dir", required=True)
parser.add_argument("--weights", required=True, help="the MobileNetV2 no-top weights the cache was filled with")
parser.add_argument("--flickr8k", required=True, help="Flickr8k folder")
parser.add_argument("--vqa", required=True, help="vqa-lines folder (the VQA v2 yes/no subset)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--arms", default="plain,detector")
args = parser.parse_args()
W, CACHE, SEED, ARMS = args.weights, args.cache_dir, args.seed, args.arms.split(",")
encoder = build_image_encoder(ModelConfig(encoder="mobilenet_v2", encoder_weights=W, encoder_trainable=False), 224)
cache = FeatureCache(CACHE, encoder)


def pooled(paths):
    out = []
    for start in range(0, len(paths), 512):
        out.append(cache.load(paths[start:start + 512]).astype(np.float32).mean(axis=1))
    return np.concatenate(out)


STOP = set("a an the of in on at to is are and with its it his her their this that there be could any for from by as".split())

# 1. word detectors on Flickr8k train photos
f8k = load_split("flickr8k", args.flickr8k, "train")
counts = collections.Counter(w for r in f8k for c in r.captions for w in set(tokenize(c)))
words = sorted(w for w, n in counts.items() if n >= 5 and w not in STOP)
index = {w: i for i, w in enumerate(words)}
x_f8k = pooled([r.image for r in f8k])
y_f8k = np.zeros((len(f8k), len(words)), np.float32)
for i, r in enumerate(f8k):
    for c in r.captions:
        for w in tokenize(c):
            if w in index:
                y_f8k[i, index[w]] = 1.0
keras.utils.set_random_seed(SEED)
detector = keras.Sequential([layers.Input((1280,)), layers.LayerNormalization(), layers.Dropout(0.3), layers.Dense(len(words))])
detector.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(from_logits=True))
detector.fit(x_f8k, y_f8k, batch_size=64, epochs=15, validation_split=0.1, verbose=0)
print(f"detectors: {len(words)} words from {len(f8k)} Flickr8k photos", flush=True)

# 2. VQA
D = args.vqa
splits = {s: load_qa_split("vqa-lines", D, s, answer_type="yes/no") for s in ("train", "val", "test")}
seen = {Path(r.image).name for r in splits["train"]}
vocab = {w: i + 2 for i, w in enumerate(sorted({w for r in splits["train"] for w in tokenize(r.question)}))}  # 0 pad, 1 unk
L = 20


def arrays(records):
    x = pooled([r.image for r in records])
    det = detector.predict(x, batch_size=512, verbose=0)  # (n, words) logits
    q = np.zeros((len(records), L), np.int32)
    s = np.zeros((len(records), L, 2), np.float32)
    for i, r in enumerate(records):
        for t, w in enumerate(tokenize(r.question)[:L]):
            q[i, t] = vocab.get(w, 1)
            if w in index:
                s[i, t] = (det[i, index[w]], 1.0)
    y = np.array([1 if r.answer == "yes" else 0 for r in records], np.int32)
    return x, q, s, y


data = {k: arrays(v) for k, v in splits.items()}


def build(with_detector):
    image = layers.Input((1280,))
    question = layers.Input((L,), dtype="int32")
    scores = layers.Input((L, 2))
    e = layers.Embedding(len(vocab) + 2, 256, mask_zero=True)(question)
    if with_detector:
        e = layers.Concatenate()([e, scores])
    h = layers.LSTM(512)(e)
    qv = layers.Dense(512, activation="tanh")(h)
    iv = layers.Dense(512, activation="relu")(layers.LayerNormalization()(image))
    iv = layers.Dense(512, activation="tanh")(layers.Dropout(0.3)(iv))
    f = layers.Dropout(0.3)(layers.Multiply()([qv, iv]))
    f = layers.Dropout(0.3)(layers.Dense(256, activation="relu")(f))
    out = layers.Dense(2)(f)
    model = keras.Model([image, question, scores], out)
    model.compile(keras.optimizers.Adam(5e-4, global_clipnorm=5.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def score(model, split):
    x, q, s, y = data[split]
    pred = model.predict([x, q, s], batch_size=512, verbose=0).argmax(-1)
    right = pred == y
    names = [Path(r.image).name in seen for r in splits[split]]
    names = np.array(names)
    return right.mean(), right[names].mean(), right[~names].mean()


for arm in ARMS:
    keras.utils.set_random_seed(SEED)
    model = build(arm == "detector")
    x, q, s, y = data["train"]
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=5, restore_best_weights=True)
    model.fit([x, q, s], y, validation_data=([data["val"][0], data["val"][1], data["val"][2]], data["val"][3]), batch_size=64,
              epochs=30, callbacks=[stop], verbose=0)
    dev, test = score(model, "val"), score(model, "test")
    print(json.dumps({"arm": arm, "seed": SEED, "dev": [round(v, 4) for v in dev], "test": [round(v, 4) for v in test],
                      "epochs": len(model.history.history["loss"])}), flush=True)
