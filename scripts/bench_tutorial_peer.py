#!/usr/bin/env python
"""Training captions/s: captioner's Flickr8k Show-Attend-Tell step against a peer rebuilt from TensorFlow's
"Image captioning with visual attention" tutorial, side by side on the same random data of matched sizes.

The peer follows the tutorial's published architecture: a Dense+ReLU "encoder" on the cached grid, Bahdanau
attention (W1 features + W2 hidden -> tanh -> V -> softmax over locations, context = weighted sum), a GRU
fed [context, word embedding], fc1 then fc2 over the vocabulary, teacher forcing in a Python loop over
words inside one `tf.function`, the masked cross-entropy summed over steps, Adam. Its batch is (image,
caption) pairs, so the grid is repeated once per caption, as in the tutorial. Sizes are the `flickr8k`
preset's: embedding 256, 512 units, attention 256 (the tutorial uses its units for attention too),
7x7x1280 features, 2,573 words, 160 captions of 21 steps per step (32 images x 5 captions for captioner).

    python scripts/bench_tutorial_peer.py [--steps 6] [--cell gru]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

from captioner.config import preset
from captioner.models.networks import build_caption_model

IMAGES, CAPTIONS, STEPS, VOCAB, PIXELS, CHANNELS = 32, 5, 21, 2573, 49, 1280


class BahdanauAttention(keras.layers.Layer):
    def __init__(self, units: int):
        super().__init__()
        self.w1, self.w2, self.v = keras.layers.Dense(units), keras.layers.Dense(units), keras.layers.Dense(1)

    def call(self, features, hidden):
        score = self.v(tf.nn.tanh(self.w1(features) + self.w2(hidden)[:, None, :]))  # (batch, pixels, 1)
        weights = tf.nn.softmax(score, axis=1)  # (batch, pixels, 1)
        return tf.reduce_sum(weights * features, axis=1), weights  # (batch, embedding), (batch, pixels, 1)


class TutorialPeer(keras.Model):
    def __init__(self, embedding_dim: int, units: int, vocab: int):
        super().__init__()
        self.units = units
        self.encoder = keras.layers.Dense(embedding_dim, activation="relu")
        self.attention = BahdanauAttention(units)
        self.embedding = keras.layers.Embedding(vocab, embedding_dim)
        self.gru = keras.layers.GRU(
            units, return_sequences=True, return_state=True, recurrent_initializer="glorot_uniform"
        )
        self.fc1, self.fc2 = keras.layers.Dense(units), keras.layers.Dense(vocab)

    def decode_step(self, word, features, hidden):
        context, _ = self.attention(features, hidden)  # (batch, embedding)
        x = tf.concat([context[:, None, :], self.embedding(word)], axis=-1)  # (batch, 1, 2 * embedding)
        output, state = self.gru(x, initial_state=hidden)  # (batch, 1, units), (batch, units)
        return self.fc2(self.fc1(output[:, 0])), state  # (batch, vocab), (batch, units)


def peer_seconds(steps: int) -> float:
    keras.utils.set_random_seed(0)
    model = TutorialPeer(256, 512, VOCAB)
    optimizer = keras.optimizers.Adam()
    loss_object = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    rng = np.random.default_rng(0)
    # (160, 49, 1280)
    grid = np.repeat(rng.standard_normal((IMAGES, PIXELS, CHANNELS)).astype("float32"), CAPTIONS, axis=0)
    captions = rng.integers(1, VOCAB, (IMAGES * CAPTIONS, STEPS + 1)).astype("int32")  # <start> w1 .. wn <end>

    @tf.function
    def train_step(grid, target):
        loss = 0.0
        hidden = tf.zeros((target.shape[0], model.units))
        word = target[:, :1]
        with tf.GradientTape() as tape:
            features = model.encoder(grid)  # (batch, pixels, embedding)
            for t in range(1, target.shape[1]):  # the tutorial's Python loop: unrolled into the graph
                logits, hidden = model.decode_step(word, features, hidden)
                mask = tf.cast(tf.not_equal(target[:, t], 0), tf.float32)
                loss += tf.reduce_mean(loss_object(target[:, t], logits) * mask)
                word = target[:, t : t + 1]
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return _time(lambda: train_step(grid, captions).numpy(), steps)


def captioner_seconds(steps: int, cell: str = "lstm") -> float:
    keras.utils.set_random_seed(0)
    config = preset("flickr8k")
    config.model.encoder_weights, config.data.image_size, config.model.cell = None, 224, cell
    model = build_caption_model(config.model, VOCAB, 224)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=5.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    )
    rng = np.random.default_rng(0)
    features = rng.standard_normal((IMAGES, PIXELS, CHANNELS)).astype("float16")  # as the feature cache stores them
    tokens = rng.integers(1, VOCAB, (IMAGES, CAPTIONS, STEPS)).astype("int32")
    return _time(lambda: model.train_on_batch({"features": features, "tokens": tokens}, tokens), steps)


def _time(call, steps: int) -> float:
    for _ in range(2):  # tracing
        call()
    started = time.perf_counter()
    for _ in range(steps):
        call()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument(
        "--cell", default="lstm", choices=["lstm", "gru"], help="captioner's decoder cell (the peer's is a GRU)"
    )
    args = parser.parse_args()
    captions = IMAGES * CAPTIONS
    results: dict[str, list[float]] = {"peer": [], "captioner": []}
    for key, name, measure in (
        ("peer", "tutorial peer (GRU, grid per caption)", peer_seconds),
        ("captioner", "captioner flickr8k preset", captioner_seconds),
        ("peer", "tutorial peer, again", peer_seconds),
        ("captioner", "captioner, again", captioner_seconds),
    ):
        seconds = measure(args.steps, args.cell) if key == "captioner" else measure(args.steps)
        results[key].append(seconds)
        print(f"{name:40s} {seconds * 1000:7.0f} ms/step  {captions / seconds:6.0f} captions/s", flush=True)
    print(
        f"captioner / peer, captions per second (best of two each): "
        f"{min(results['peer']) / min(results['captioner']):.2f}x"
    )


if __name__ == "__main__":
    main()
