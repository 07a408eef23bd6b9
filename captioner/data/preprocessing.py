"""Records to `tf.data`: decode images (Pillow, in parallel), tokenise and pad captions or questions, batch."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from captioner.data import CaptionRecord, QARecord
from captioner.data.arrays import caption_arrays, question_arrays
from captioner.data.images import try_load_image
from captioner.data.vocab import AnswerVocabulary, Vocabulary
from captioner.distribute import EpochClock, InputShard
from captioner.errors import CaptionerError


class _Images:
    """Images by row number, read with the one safe reader (`try_load_image`); with `cache`, each is decoded once and
    kept in memory (small datasets). An image that cannot be read (missing, truncated, not an image, unreadable
    folder) comes back as zeros with readable False, after `on_error(path, message)`, once: the verdict is kept too.
    Only when every image has failed does reading raise (a CaptionerError inside tf.data; `pipeline_error` makes it
    one line again); `what` names the images in that message, e.g. "images of the train split"."""

    def __init__(
        self, paths: Sequence[str], image_size: int, on_error: Callable[[str, str], None], what: str, cache: bool
    ):
        self.paths, self.image_size, self.on_error, self.what, self.cache = (
            list(paths),
            image_size,
            on_error,
            what,
            cache,
        )
        self.total = len(set(self.paths))
        self.failed: dict[str, str] = {}
        self.decoded: dict[int, tuple[np.ndarray, bool]] = {}
        self.lock = threading.Lock()
        self.blank = np.zeros((image_size, image_size, 3), np.uint8)

    def read(self, row) -> tuple[np.ndarray, bool]:
        row = int(row)
        if row in self.decoded:
            return self.decoded[row]
        path = self.paths[row]
        image, message = (None, self.failed[path]) if path in self.failed else try_load_image(path, self.image_size)
        if image is None:
            with self.lock:
                first = path not in self.failed
                self.failed[path] = message
                everything = len(self.failed) == self.total
            if first:
                self.on_error(path, message)
            if everything:
                raise CaptionerError(f"none of the {self.total} {self.what} could be read (the last: {message})")
        result = (image, True) if image is not None else (self.blank, False)
        if self.cache or image is None:
            self.decoded[row] = result
        return result


def image_dataset(
    paths: Sequence[str], image_size: int, on_error: Callable[[str, str], None], what: str = "images"
) -> tf.data.Dataset:
    """`(image, readable)` elements in order, decoded in parallel: image uint8 (image_size, image_size, 3), readable
    bool.

    An image that cannot be read comes out as zeros with readable False, after `on_error(path, message)`; the caller
    drops it. Only when every image of `paths` has failed does the pipeline raise (see `_Images`).
    """
    images = _Images(paths, image_size, on_error, what, cache=False)

    def decode(row):
        image, readable = tf.numpy_function(images.read, [row], [tf.uint8, tf.bool], stateful=False)
        return tf.ensure_shape(image, (image_size, image_size, 3)), tf.ensure_shape(readable, ())

    return tf.data.Dataset.range(len(images.paths)).map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def row_order(count: int, shuffle: bool, seed: int, clock: EpochClock) -> tf.data.Dataset:
    """Row numbers 0..count-1, one epoch per iterator: in order, or shuffled by a permutation drawn with numpy from
    (seed, the epoch `clock` says training is in). TensorFlow's own seeded shuffle counts iterators, and Keras makes
    one more through a MirroredStrategy; this order is the same on every backend, device layout and process, so
    data-parallel training sees the batches one device sees, and a resumed run the batches it would have seen."""
    if not shuffle:
        return tf.data.Dataset.range(count)

    def permutation(_):
        return np.random.default_rng([seed, clock.epoch]).permutation(count).astype(np.int64)

    order = tf.data.Dataset.from_tensors(np.int64(0)).map(
        lambda x: tf.ensure_shape(tf.numpy_function(permutation, [x], tf.int64, stateful=True), (count,))
    )  # (count,)
    return order.unbatch().apply(tf.data.experimental.assert_cardinality(count))


def _process_rows(count: int, batch_size: int, shuffle: bool, seed: int, shard: InputShard) -> tf.data.Dataset:
    """(rows,) int64 batches: this process's rows of each global batch of `batch_size` (all of them in one process)."""
    # (batch,)
    dataset = row_order(count, shuffle, seed, shard.clock).batch(batch_size, drop_remainder=shard.drop_remainder)
    if shard.count > 1:  # the same order in every process: each keeps its slice of the same global batch
        start, stop = shard.rows(batch_size)
        dataset = dataset.map(lambda rows: rows[start:stop])  # (batch / count,)
    return dataset


PipelineFailure = tf.errors.OpError  # what iterating a tf.data pipeline raises when a map function fails


def pipeline_error(exc: Exception) -> CaptionerError:
    """One line for an error raised inside a tf.data pipeline: the CaptionerError it carries, else its first line."""
    text = str(getattr(exc, "message", exc))
    found = re.search(r"CaptionerError: ([^\n]+)", text)
    if found:
        return CaptionerError(found.group(1).strip())
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return CaptionerError(f"the input pipeline failed: {first[:300]}")


def _image_and_text_dataset(
    paths: Sequence[str],
    image_size: int,
    text: tuple[np.ndarray, np.ndarray],
    text_key: str,
    cache: bool,
    on_error: Callable[[str, str], None],
    what: str,
    batch_size: int,
    shuffle: bool,
    seed: int,
    shard: InputShard,
) -> tf.data.Dataset:
    """`({"images", text_key}, targets)` batches: decoded images (in parallel) with their rows of the token arrays.

    An unreadable image stays in place as a blank image whose targets are all 0 (padding / `<other>`), which the
    loss and the metrics ignore: it is skipped without changing the number of batches (so the progress bar and
    a mid-epoch resume see the same epoch) and reported once. Each process decodes only its rows of every batch.
    image: (batch, image_size, image_size, 3) uint8; text: (rows, ...) int32 arrays (targets (rows, n, steps) or
    (rows, n)).
    """
    images = _Images(paths, image_size, on_error, what, cache)
    inputs, targets = text

    def read(rows):  # one Python call a batch (a call per image held the GIL often enough to slow training 1.4x)
        decoded = [images.read(row) for row in rows]
        readable = np.array([ok for _, ok in decoded]).reshape(-1, *[1] * (targets.ndim - 1))  # (batch, 1, ...)
        return (
            np.stack([image for image, _ in decoded]),
            inputs[rows],
            np.where(readable, targets[rows], 0).astype(targets.dtype),
        )

    def load(rows):
        image, tokens, target = tf.numpy_function(read, [rows], [tf.uint8, tf.int32, tf.int32], stateful=False)
        image = tf.ensure_shape(image, (None, image_size, image_size, 3))  # (batch, size, size, 3) uint8
        # (batch, captions, steps) or (batch, questions, steps)
        tokens = tf.ensure_shape(tokens, (None, *inputs.shape[1:]))
        return {"images": image, text_key: tokens}, tf.ensure_shape(target, (None, *targets.shape[1:]))

    # Batches are read in parallel (the first pass decodes with Pillow, which releases the GIL), in order.
    return (
        _process_rows(len(paths), batch_size, shuffle, seed, shard)
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


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
    *,
    on_error: Callable[[str, str], None],
    what: str = "images",
    shard: InputShard = InputShard(),
) -> tf.data.Dataset:
    """Training batches `({"images", "tokens"}, targets)`; unreadable images are skipped (see `image_dataset`).

    images: (batch, image_size, image_size, 3) uint8; tokens and targets: (batch, captions_per_image, steps) int32.
    """
    arrays = caption_arrays(records, vocab, captions_per_image, max_caption_length)
    return _image_and_text_dataset(
        [r.image for r in records],
        image_size,
        arrays,
        "tokens",
        cache,
        on_error,
        what,
        batch_size,
        shuffle,
        seed,
        shard,
    )


def vqa_dataset(
    groups: Sequence[tuple[str, Sequence[QARecord]]],
    vocab: Vocabulary,
    answers: AnswerVocabulary,
    image_size: int,
    questions_per_image: int,
    max_question_length: int,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    cache: bool = True,
    *,
    on_error: Callable[[str, str], None],
    what: str = "images",
    shard: InputShard = InputShard(),
) -> tf.data.Dataset:
    """Training batches `({"images", "questions"}, targets)`; unreadable images are skipped with their questions.

    images: (batch, image_size, image_size, 3) uint8; questions: (batch, questions_per_image, steps) int32;
    targets: (batch, questions_per_image) int32.
    """
    arrays = question_arrays(groups, vocab, answers, questions_per_image, max_question_length)
    return _image_and_text_dataset(
        [image for image, _ in groups],
        image_size,
        arrays,
        "questions",
        cache,
        on_error,
        what,
        batch_size,
        shuffle,
        seed,
        shard,
    )


def feature_caption_dataset(
    features: np.ndarray,
    records: Sequence[CaptionRecord],
    vocab: Vocabulary,
    captions_per_image: int,
    max_caption_length: int,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    shard: InputShard = InputShard(),
) -> tf.data.Dataset:
    """Training batches `({"features", "tokens"}, targets)` from cached encoder features (no image decoding).

    features: (num_records, num_pixels, encoder_dim), anything indexed by an integer array: an array, a memory map,
    or `FeatureCache.rows` (gathered from the cache's shards per batch, so the features are never all in memory).
    """
    arrays = caption_arrays(records, vocab, captions_per_image, max_caption_length)
    return _feature_dataset(features, arrays, "tokens", batch_size, shuffle, seed, shard)


def feature_vqa_dataset(
    features: np.ndarray,
    groups: Sequence[tuple[str, Sequence[QARecord]]],
    vocab: Vocabulary,
    answers: AnswerVocabulary,
    questions_per_image: int,
    max_question_length: int,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    shard: InputShard = InputShard(),
) -> tf.data.Dataset:
    """Training batches `({"features", "questions"}, targets)` from cached encoder features, one row per question
    group (features: (num_groups, num_pixels, encoder_dim), indexed like `feature_caption_dataset`'s)."""
    arrays = question_arrays(groups, vocab, answers, questions_per_image, max_question_length)
    return _feature_dataset(features, arrays, "questions", batch_size, shuffle, seed, shard)


def _feature_dataset(
    features: np.ndarray,
    text: tuple[np.ndarray, np.ndarray],
    text_key: str,
    batch_size: int,
    shuffle: bool,
    seed: int,
    shard: InputShard = InputShard(),
) -> tf.data.Dataset:
    """`({"features", text_key}, targets)` batches: rows of `features` gathered per batch with the rows of `text`;
    with several processes, each gathers only its rows of every global batch (`InputShard`)."""
    inputs, targets = text
    num_pixels, encoder_dim = features.shape[1:]

    def gather(indices):
        indices = np.sort(indices)  # sequential reads of a memory map; order inside a batch does not matter
        return features[indices], inputs[indices], targets[indices]

    def load(indices):
        grid, tokens, target = tf.numpy_function(
            gather, [indices], [tf.as_dtype(features.dtype), tf.int32, tf.int32], stateful=False
        )
        grid = tf.ensure_shape(grid, (None, num_pixels, encoder_dim))  # (batch, num_pixels, encoder_dim)
        # (batch, captions, steps) or (batch, questions, steps)
        tokens = tf.ensure_shape(tokens, (None, *inputs.shape[1:]))
        target = tf.ensure_shape(target, (None, *targets.shape[1:]))  # (batch, captions, steps) or (batch, questions)
        return {"features": grid, text_key: tokens}, target

    return (
        _process_rows(len(inputs), batch_size, shuffle, seed, shard)
        .map(load, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
