"""Records to `tf.data`: decode images (Pillow, in parallel), tokenise and pad captions, batch, prefetch."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from captioner.datasets import CaptionRecord
from captioner.images import load_image
from captioner.vocab import Vocabulary


def caption_arrays(
    records: Sequence[CaptionRecord], vocab: Vocabulary, captions_per_image: int, max_caption_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forcing inputs `<start> w1..wn` and targets `w1..wn <end>`, zero-padded.

    Images with fewer captions get all-padding rows, which the loss ignores; extra captions are dropped.

    Returns:
        inputs, targets: int32, each (num_records, captions_per_image, max_caption_length + 1).
    """
    steps = max_caption_length + 1
    inputs = np.zeros((len(records), captions_per_image, steps), np.int32)
    targets = np.zeros_like(inputs)
    for i, record in enumerate(records):
        for j, caption in enumerate(record.captions[:captions_per_image]):
            ids = vocab.encode_caption(caption, max_caption_length)  # <start> w1..wn <end>
            inputs[i, j, : len(ids) - 1] = ids[:-1]
            targets[i, j, : len(ids) - 1] = ids[1:]
    return inputs, targets


def image_dataset(paths: Sequence[str], image_size: int) -> tf.data.Dataset:
    """Decoded uint8 images (image_size, image_size, 3), in order, decoded in parallel."""

    def read(path):
        return load_image(path.decode("utf-8"), image_size)

    def decode(path):
        image = tf.numpy_function(read, [path], tf.uint8, stateful=False)
        return tf.ensure_shape(image, (image_size, image_size, 3))

    return tf.data.Dataset.from_tensor_slices(list(paths)).map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def caption_dataset(
    records: Sequence[CaptionRecord],
    vocab: Vocabulary,
    image_size: int,
    captions_per_image: int,
    max_caption_length: int,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    cache: bool = True,
) -> tf.data.Dataset:
    """Training batches `({"images", "tokens"}, targets)`.

    images: (batch, image_size, image_size, 3) uint8; tokens and targets: (batch, captions_per_image, steps) int32.
    """
    inputs, targets = caption_arrays(records, vocab, captions_per_image, max_caption_length)
    images = image_dataset([r.image for r in records], image_size)
    if cache:
        images = images.cache()  # decoded once, reused every epoch
    text = tf.data.Dataset.from_tensor_slices((inputs, targets))
    dataset = tf.data.Dataset.zip(images, text).map(lambda image, pair: ({"images": image, "tokens": pair[0]}, pair[1]))
    if shuffle:
        dataset = dataset.shuffle(min(len(records), 10_000), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
