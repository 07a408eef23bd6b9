"""Experiment harness (not the product): tries at yes/no VQA on photographs, each a small change to the vqa-coco
recipe rebuilt in plain Keras on the cached MobileNetV2 grids, trained and scored the same way (Adam 5e-4, batch 64,
early stopping on dev accuracy, patience 5, at most 30 epochs: `--patience`, `--epochs`), several seeds each. Prints
one JSON line per arm and seed, then per arm the mean over seeds: dev and test accuracy overall, on photos seen in
train and on unseen ones,
answering "yes" where P(yes) > 0.5 and where P(yes) is above the threshold most accurate on dev; and test's
unseen-photo questions split in two: those whose exact text was asked in train (twins; VQA v2 pairs each question
with a similar photo whose answer differs, so the train answer is usually wrong there) and the rest (new).

Arms (`--arms`, comma-separated):
  plain     the recipe: grid mean, LayerNorm, Dense 512 ReLU, tanh projections multiplied; question: embedding 256,
  LSTM 512 gru       the question read by a GRU instead of the LSTM
  bilstm    by a bidirectional LSTM (256 each way)
  balanced  class weights that make "yes" and "no" weigh the same in the loss
  smooth    label smoothing 0.1
  decay     AdamW, weight decay 0.05
  wide      every width doubled (embedding 512, LSTM/fusion/ReLU layer 1024, classifier 512)
  narrow    every width halved
  meanmax   the grid's mean and its max, concatenated (2,560 numbers)
  concat    the two projections concatenated instead of multiplied
  flip      each training question twice, with its photo's grid and with its mirror image's (computed once with the
            encoder, kept in CACHE_DIR/flipped-<encoder key>-<photos>.npz, outside the product's cache)
  detector  word detectors learned from Flickr8k captions (needs --flickr8k): a multi-label logistic layer on the
            cached grids of Flickr8k's train photos predicts which caption words (count >= 5, stop words out) describe
            a photo; each question word that has a detector enters the question LSTM with its logit on this photo
  imagenet  the same path as `detector`, with MobileNetV2's own ImageNet classifier (needs --top-weights and the
            imagenet_class_index.json beside it) as the detectors: a question word that names an ImageNet class (a
            token of the class name, or the word's singular) enters the LSTM with log(summed probability of those
            classes on this photo)
  debias    a product of experts against the language prior (Clark et al. 2019, "Don't take the easy way out"): in
            training the recipe's logits are added to the log-odds of train's own answers to the question's exact text
            (add-one smoothed: a text asked once with "yes" gives P(yes) = 2/3), so what the text alone predicts in
            train is left to that expert; on dev and test the recipe answers with its own logits alone. (A
            question-only LSTM early-stopped on dev, the first version, stops at its first epoch and answers the
            majority: on dev the text prior misleads, so it learns no prior to take out.)
  hires     the grid mean of MobileNetV2 run on each photo upsampled to 448x448 (a 14x14 grid; objects twice as large
            to the CNN), computed once and kept in CACHE_DIR/hires448-<encoder key>-<photos>.npz
  trainval  the recipe as `plain`, then again from the same seed on train + dev for the number of epochs early stopping
            chose (a common last step; dev accuracy is then meaningless): test questions about a photo that only dev
            has (166 of the 891 unseen-photo ones) become questions about a photo the model trained on
  multitask the recipe's image tower (LayerNorm, Dense 512 ReLU) also predicts which Flickr8k caption words (as for
            `detector`) describe a Flickr8k train photo, trained together (needs --flickr8k; `--aux-weight`, 10): each
            batch row is a VQA question and a Flickr8k photo; the answer alone picks the epoch
  ensemble  (when `plain` runs with several seeds) the plain models' probabilities averaged

Needs the photos' MobileNetV2 grids in the feature cache (`captioner features --dataset vqa-lines ...`; for `detector`
also `--dataset flickr8k ...` with the same --cache-dir). BENCHMARKS.md, "VQA on photographs", has the numbers.

    python scripts/vqa_tries.py --cache-dir C --weights W --vqa VQA_DIR [--flickr8k F8K_DIR] [--seeds 0,1,2] [--arms
    plain,gru]
"""

import argparse
import collections
import json
import re
from pathlib import Path

import keras
import numpy as np
from keras import layers

from captioner.config import ModelConfig
from captioner.data import load_qa_split, load_split
from captioner.data.images import read_image
from captioner.data.vocab import tokenize
from captioner.fileio import atomic_path
from captioner.models.features import FeatureCache
from captioner.models.networks import build_image_encoder

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cache-dir", required=True)
parser.add_argument("--weights", required=True, help="the MobileNetV2 no-top weights the cache was filled with")
parser.add_argument("--vqa", required=True, help="vqa-lines folder (the VQA v2 yes/no subset)")
parser.add_argument("--flickr8k", help="Flickr8k folder (the detector arm only)")
parser.add_argument("--top-weights", help="the MobileNetV2 weights with the classifier (the imagenet arm only)")
parser.add_argument("--seeds", default="0")
parser.add_argument("--arms", default="plain")
parser.add_argument("--patience", type=int, default=5, help="epochs without a better dev accuracy before stopping")
parser.add_argument("--epochs", type=int, default=30, help="at most this many epochs")
parser.add_argument(
    "--aux-weight", type=float, default=10.0, help="multitask: the caption-word loss's weight (the answer's is 1)"
)
args = parser.parse_args()
SEEDS, ARMS = [int(s) for s in args.seeds.split(",")], args.arms.split(",")
if ("detector" in ARMS or "multitask" in ARMS) and not args.flickr8k:
    parser.error("the detector and multitask arms need --flickr8k")
if "imagenet" in ARMS and not args.top_weights:
    parser.error("the imagenet arm needs --top-weights")
if "imagenet" in ARMS and "detector" in ARMS:
    parser.error("the imagenet and detector arms fill the same input: run them one at a time")
encoder = build_image_encoder(
    ModelConfig(encoder="mobilenet_v2", encoder_weights=args.weights, encoder_trainable=False), 224
)
cache = FeatureCache(args.cache_dir, encoder)
L = 20  # question words kept


def pooled(paths):
    """(n, 2560): each photo's grid mean and max over the 7x7 cells."""
    out = []
    for start in range(0, len(paths), 512):
        grid = cache.load(paths[start : start + 512]).astype(np.float32)  # (b, 49, 1280)
        out.append(np.concatenate([grid.mean(axis=1), grid.max(axis=1)], axis=-1))  # (b, 2560)
    return np.concatenate(out)


STOP = set(
    "a an the of in on at to is are and with its it his her their this that there be could any for from by as".split()
)


def caption_words():
    """(words -> column, (n, 1280) grid means of Flickr8k's train photos, (n, words) 1 where a caption has the word)."""
    f8k = load_split("flickr8k", args.flickr8k, "train")
    counts = collections.Counter(w for r in f8k for c in r.captions for w in set(tokenize(c)))
    words = sorted(w for w, n in counts.items() if n >= 5 and w not in STOP)
    index = {w: i for i, w in enumerate(words)}
    x = pooled([r.image for r in f8k])[:, :1280]  # (n, 1280) means
    y = np.zeros((len(f8k), len(words)), np.float32)
    for i, r in enumerate(f8k):
        for w in {w for c in r.captions for w in tokenize(c)}:
            if w in index:
                y[i, index[w]] = 1.0
    return index, x, y


def word_detectors(seed):
    """(words -> column, a model from a pooled grid to one logit per word) learned on Flickr8k's train captions."""
    index, x, y = caption_words()
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [layers.Input((1280,)), layers.LayerNormalization(), layers.Dropout(0.3), layers.Dense(len(index))]
    )
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=64, epochs=15, validation_split=0.1, verbose=0)
    print(f"detectors: {len(index)} words from {len(x)} Flickr8k photos", flush=True)
    return index, model


splits = {s: load_qa_split("vqa-lines", args.vqa, s, answer_type="yes/no") for s in ("train", "val", "test")}
seen_photos = {Path(r.image).name for r in splits["train"]}
vocab = {
    w: i + 2 for i, w in enumerate(sorted({w for r in splits["train"] for w in tokenize(r.question)}))
}  # 0 pad, 1 unknown


def imagenet_detectors():
    """(words -> ImageNet class ids, a function from pooled grids to log summed class probability per word)."""
    full = keras.applications.MobileNetV2(weights=args.top_weights)
    kernel, bias = full.get_layer("predictions").get_weights()  # (1280, 1000), (1000,)
    index = json.loads((Path(args.top_weights).parent / "imagenet_class_index.json").read_text())
    names = [set(re.split(r"[_\-\s']", index[str(i)][1].lower())) for i in range(1000)]
    words = collections.defaultdict(list)
    for i, tokens in enumerate(names):
        for t in tokens - STOP:
            words[t].append(i)

    def scores(means):  # (n, 1280) -> (n, words)
        z = means @ kernel + bias  # (n, 1000)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return np.log(np.stack([p[:, ids].sum(axis=1) for ids in words.values()], axis=1) + 1e-4)  # (n, words)

    return {w: i for i, w in enumerate(words)}, scores


def singular(word):
    """`word` without a plural ending, crudely (dogs -> dog, buses -> bus, puppies -> puppy, but horses -> hors)."""
    for suffix, ending in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) > 3:
            return word[: -len(suffix)] + ending
    return word


if "detector" in ARMS:
    detector_words, detector_model = word_detectors(SEEDS[0])
    detectors = (detector_words, lambda means: detector_model.predict(means, batch_size=512, verbose=0))
else:
    detectors = imagenet_detectors() if "imagenet" in ARMS else None
f8k_words = caption_words() if "multitask" in ARMS else None  # (words -> column, (n, 1280) means, (n, words) targets)


def arrays(records):
    """The inputs (pooled grids, word ids, per-word detector logit and flag), the answers (1 = yes), train's photos."""
    x = pooled([r.image for r in records])  # (n, 2560)
    q = np.zeros((len(records), L), np.int32)
    s = np.zeros((len(records), L, 2), np.float32)
    logits = detectors[1](x[:, :1280]) if detectors else None  # (n, words)
    for i, r in enumerate(records):
        for t, w in enumerate(tokenize(r.question)[:L]):
            q[i, t] = vocab.get(w, 1)
            forms = (w, singular(w)) if "imagenet" in ARMS else (w,)  # the Flickr8k detectors match words exactly
            named = next((v for v in forms if detectors and v in detectors[0]), None)
            if named:
                s[i, t] = (logits[i, detectors[0][named]], 1.0)
    y = np.array([1 if r.answer == "yes" else 0 for r in records], np.int32)
    seen = np.array([Path(r.image).name in seen_photos for r in records])
    return {"x": x, "q": q, "s": s, "y": y, "seen": seen}


data = {split: arrays(records) for split, records in splits.items()}
train_questions = {" ".join(tokenize(r.question)) for r in splits["train"]}
dev_photos = {Path(r.image).name for r in splits["val"]} - seen_photos
data["test"]["dev_photo"] = np.array([Path(r.image).name in dev_photos for r in splits["test"]])  # photos only dev has
for split in ("val", "test"):
    data[split]["twin"] = np.array([" ".join(tokenize(r.question)) in train_questions for r in splits[split]])


def auc(score, truth):
    """The chance that a random "yes" question scores above a random "no" one (ties count half)."""
    ranks = np.argsort(np.argsort(score, kind="stable"), kind="stable").astype(np.float64)
    for value in np.unique(score):  # average the ranks of ties
        ranks[score == value] = ranks[score == value].mean()
    yes = truth == 1
    return float((ranks[yes].mean() - (yes.sum() - 1) / 2) / max((~yes).sum(), 1))


if detectors:  # the detectors alone, before any training: does the best word score rank "yes" above "no"?
    for split in ("val", "test"):
        d = data[split]
        named = d["s"][:, :, 1].any(axis=1)  # (n,) questions with at least one word that has a detector
        best = np.where(d["s"][:, :, 1] > 0, d["s"][:, :, 0], -np.inf).max(axis=1)  # (n,)
        print(
            json.dumps(
                {
                    "detectors_alone": split,
                    "questions_named": int(named.sum()),
                    "auc": round(auc(best[named], d["y"][named]), 4),
                    "auc_unseen": round(auc(best[named & ~d["seen"]], d["y"][named & ~d["seen"]]), 4),
                }
            ),
            flush=True,
        )


def stored_means(records, photos, name, size, flip=False):
    """(n, 1280): the grid mean of each record's photo read at `size` x `size` (mirrored left to right if `flip`),
    computed once for `photos` with the encoder and kept in CACHE_DIR/<name>-<encoder key>-<photos>.npz."""
    store = Path(args.cache_dir) / f"{name}-{cache.key[:16]}-{len(photos)}.npz"  # this encoder's grids of these photos
    if not store.exists():
        cnn = (
            encoder
            if size == 224
            else build_image_encoder(
                ModelConfig(encoder="mobilenet_v2", encoder_weights=args.weights, encoder_trainable=False), size
            )
        )
        means = []
        for start in range(0, len(photos), 32):
            images = np.stack(
                [
                    read_image(p, size)[0][:, ::-1] if flip else read_image(p, size)[0]
                    for p in photos[start : start + 32]
                ]
            )  # (b, size, size, 3)
            grid = keras.ops.convert_to_numpy(cnn.cache_features(images))  # (b, (size / 32)^2, 1280)
            means.append(grid.mean(axis=1))
        with atomic_path(store) as tmp:
            np.savez(tmp, photos=np.array(photos), means=np.concatenate(means))
    saved = np.load(store)
    row = {p: i for i, p in enumerate(saved["photos"])}
    return saved["means"][[row[r.image] for r in records]]  # (n, 1280)


def flipped_means(records):
    """(n, 1280): the grid mean of each record's photo mirrored left to right."""
    return stored_means(records, sorted({r.image for r in records}), "flipped", 224, flip=True)


def hires_means(records):
    """(n, 1280): the 14x14 grid mean of each record's photo upsampled to 448x448 (every split's photos in one file)."""
    return stored_means(records, sorted({r.image for split in splits.values() for r in split}), "hires448", 448)


if "hires" in ARMS:
    for split, records in splits.items():
        data[split]["hires"] = hires_means(records)
for d in data.values():
    d["bias"] = np.zeros((len(d["y"]), 2), np.float32)  # the text-prior expert's log-probabilities (debias, train only)


def text_prior_log_probs():
    """(n, 2) log of train's add-one-smoothed answer shares for each train question's exact (tokenised) text."""
    texts = [" ".join(tokenize(r.question)) for r in splits["train"]]
    asked, yes = collections.Counter(texts), collections.Counter(t for t, y in zip(texts, data["train"]["y"]) if y == 1)
    p_yes = np.array([(yes[t] + 1) / (asked[t] + 2) for t in texts])  # (n,)
    return np.log(np.stack([1 - p_yes, p_yes], axis=1)).astype(np.float32)  # (n, 2): [no, yes]


def build(arm):
    scale = {"wide": 2, "narrow": 0.5}.get(arm, 1)
    width = lambda n: int(n * scale)  # noqa: E731
    image = layers.Input((2560 if arm == "meanmax" else 1280,))
    question = layers.Input((L,), dtype="int32")
    scores = layers.Input((L, 2))
    bias = layers.Input((2,))  # the text-prior expert's log-probabilities (debias, in training; zeros elsewhere)
    e = layers.Embedding(len(vocab) + 2, width(256), mask_zero=True)(question)  # (b, L, 256)
    if arm in ("detector", "imagenet"):
        e = layers.Concatenate()([e, scores])  # (b, L, 258)
    if arm == "gru":
        h = layers.GRU(width(512))(e)
    elif arm == "bilstm":
        h = layers.Bidirectional(layers.LSTM(width(256)))(e)  # (b, 512)
    else:
        h = layers.LSTM(width(512))(e)  # (b, 512)
    qv = layers.Dense(width(512), activation="tanh")(h)
    norm, relu = (
        layers.LayerNormalization(),
        layers.Dense(width(512), activation="relu"),
    )  # the image tower (shared by multitask)
    iv = relu(norm(image))  # (b, 512)
    iv = layers.Dense(width(512), activation="tanh")(layers.Dropout(0.3)(iv))
    fused = layers.Concatenate()([qv, iv]) if arm == "concat" else layers.Multiply()([qv, iv])  # (b, 512 or 1024)
    f = layers.Dropout(0.3)(fused)
    f = layers.Dropout(0.3)(layers.Dense(width(256), activation="relu")(f))
    out = layers.Dense(2, name="answer")(f)  # (b, 2) logits
    if arm == "debias":
        out = layers.Add()([out, bias])  # (b, 2): the product of the two experts, as logits
    optimizer = (
        keras.optimizers.AdamW(5e-4, weight_decay=0.05, global_clipnorm=5.0)
        if arm == "decay"
        else keras.optimizers.Adam(5e-4, global_clipnorm=5.0)
    )
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1 if arm == "smooth" else 0.0)
    if arm == "multitask":  # the same image tower also names a Flickr8k photo's caption words, trained together
        photo = layers.Input((1280,))  # a Flickr8k train photo's grid mean, paired with each VQA row
        # (b, words) logits
        words = layers.Dense(len(f8k_words[0]), name="words")(layers.Dropout(0.3)(relu(norm(photo))))
        model = keras.Model([image, question, scores, bias, photo], {"answer": out, "words": words})
        model.compile(
            optimizer,
            {"answer": loss, "words": keras.losses.BinaryCrossentropy(from_logits=True)},
            loss_weights={"answer": 1.0, "words": args.aux_weight},
            metrics={"answer": ["categorical_accuracy"]},
        )
        return model
    model = keras.Model([image, question, scores, bias], out)
    model.compile(optimizer, loss, metrics=["categorical_accuracy"])
    return model


def inputs(split, arm):
    d = data[split]
    image = d["x"] if arm == "meanmax" else d["hires"] if arm == "hires" else d["x"][:, :1280]
    if arm == "multitask":  # no Flickr8k photo beside dev and test rows: zeros, and the word loss there means nothing
        return [image, d["q"], d["s"], d["bias"], np.zeros((len(image), 1280), np.float32)]
    return [image, d["q"], d["s"], d["bias"]]


def answers_of(outputs):
    """The answer logits, (n, 2), of a model's outputs (a dict for multitask)."""
    return outputs["answer"] if isinstance(outputs, dict) else outputs


def accuracy(yes, split, threshold=0.5):
    """[overall, seen photos, unseen photos] answering "yes" where P(yes) (`yes`, (n,)) > threshold."""
    right = (yes > threshold) == data[split]["y"]
    seen = data[split]["seen"]
    return [round(float(v), 4) for v in (right.mean(), right[seen].mean(), right[~seen].mean())]


def unseen_twin_new(yes, split):
    """[unseen-photo questions asked in train too, unseen-photo questions new to train] answering at 0.5."""
    right = (yes > 0.5) == data[split]["y"]
    unseen, twin = ~data[split]["seen"], data[split]["twin"]
    return [round(float(right[unseen & twin].mean()), 4), round(float(right[unseen & ~twin].mean()), 4)]


def dev_threshold(yes):
    """The P(yes) above which to answer "yes" that is most accurate on dev (0.30-0.90 by 0.02)."""
    grid = np.round(np.arange(0.30, 0.91, 0.02), 2)
    return float(grid[int(np.argmax([accuracy(yes, "val", t)[0] for t in grid]))])


results = collections.defaultdict(list)
plain_yes = collections.defaultdict(list)  # split -> P(yes) of each plain model
for arm in ARMS:
    for seed in SEEDS:
        keras.utils.set_random_seed(seed)
        model = build(arm)
        y = keras.ops.one_hot(data["train"]["y"], 2)
        weights = None
        if arm == "balanced":
            share_yes = data["train"]["y"].mean()
            weights = {0: 0.5 / (1 - share_yes), 1: 0.5 / share_yes}
        if arm == "debias":
            data["train"]["bias"] = text_prior_log_probs()
        x = inputs("train", arm)
        data["train"]["bias"] = np.zeros_like(data["train"]["bias"])  # the expert is used in training only
        if arm == "flip":
            x = [np.concatenate([x[0], flipped_means(splits["train"])]), *(np.concatenate([v, v]) for v in x[1:])]
            y = keras.ops.concatenate([y, y])
        y_val = keras.ops.one_hot(data["val"]["y"], 2)
        monitor = "val_categorical_accuracy"
        if arm == "multitask":  # each VQA row paired with a Flickr8k photo, in a seeded random order, cycled
            rows = np.resize(np.random.default_rng(seed).permutation(len(f8k_words[1])), len(y))
            x[-1], y = f8k_words[1][rows], {"answer": y, "words": f8k_words[2][rows]}
            y_val = {"answer": y_val, "words": np.zeros((len(y_val), len(f8k_words[0])), np.float32)}
            monitor = "val_answer_categorical_accuracy"
        stop = keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max", patience=args.patience, restore_best_weights=True
        )
        model.fit(
            x,
            y,
            validation_data=(inputs("val", arm), y_val),
            batch_size=64,
            epochs=args.epochs,
            callbacks=[stop],
            class_weight=weights,
            verbose=0,
        )
        if arm == "trainval":
            best = int(np.argmax(model.history.history["val_categorical_accuracy"])) + 1
            keras.utils.set_random_seed(seed)
            model = build(arm)
            model.fit(
                [np.concatenate([a, b]) for a, b in zip(x, inputs("val", arm))],
                keras.ops.concatenate([y, keras.ops.one_hot(data["val"]["y"], 2)]),
                batch_size=64,
                epochs=best,
                verbose=0,
            )
        yes = {
            split: keras.ops.convert_to_numpy(
                keras.ops.softmax(answers_of(model.predict(inputs(split, arm), batch_size=512, verbose=0)))
            )[:, 1]
            for split in ("val", "test")
        }  # split -> (n,) P(yes)
        if arm == "plain":
            for split, p in yes.items():
                plain_yes[split].append(p)
        threshold = dev_threshold(yes["val"])
        line = {
            "arm": arm,
            "seed": seed,
            "dev": accuracy(yes["val"], "val"),
            "test": accuracy(yes["test"], "test"),
            "epochs": len(model.history.history["loss"]),
            "dev_threshold": threshold,
            "dev_at_threshold": accuracy(yes["val"], "val", threshold),
            "test_at_threshold": accuracy(yes["test"], "test", threshold),
            "test_unseen_twin_new": unseen_twin_new(yes["test"], "test"),
            "test_photo_in_dev_only": round(
                float(((yes["test"] > 0.5) == data["test"]["y"])[data["test"]["dev_photo"]].mean()), 4
            ),
        }
        results[arm].append(line)
        print(json.dumps(line), flush=True)
    runs = results[arm]
    print(
        json.dumps(
            {
                "arm": arm,
                "mean_of_seeds": len(runs),
                **{
                    k: [round(float(np.mean([r[k][i] for r in runs])), 4) for i in range(3)]
                    for k in ("dev", "test", "test_at_threshold")
                },
            }
        ),
        flush=True,
    )
if len(plain_yes["val"]) > 1:
    print(
        json.dumps(
            {
                "arm": "ensemble",
                "of_plain_seeds": SEEDS,
                **{
                    name: accuracy(np.mean(plain_yes[split], axis=0), split)
                    for name, split in (("dev", "val"), ("test", "test"))
                },
                "test_unseen_twin_new": unseen_twin_new(np.mean(plain_yes["test"], axis=0), "test"),
            }
        ),
        flush=True,
    )
