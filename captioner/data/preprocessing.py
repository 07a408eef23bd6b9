"""Records to `tf.data`: decode images (Pillow, in parallel), tokenise and pad captions or questions, batch, prefetch."""

from __future__ import annotations

import re
import threading
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from captioner.data.arrays import caption_arrays, question_arrays
from captioner.data import CaptionRecord, QARecord
from captioner.errors import CaptionerError
from captioner.data.images import try_load_image
from captioner.data.vocab import AnswerVocabulary, Vocabulary


def image_dataset(paths: Sequence[str], image_size: int, on_error: Callable[[str, str], None], what: str = "images") -> tf.data.Dataset:
    """`(image, readable)` elements in order, decoded in parallel: image uint8 (image_size, image_size, 3), readable bool.

    An image that cannot be read (missing, truncated, not an image, unreadable folder) comes out as zeros with
    readable False, after `on_error(path, message)`; the caller drops it. Only when every image of `paths` has
    failed does the pipeline raise (a CaptionerError inside tf.data; `pipeline_error` makes it one line again).
    `what` names the images in that message, e.g. "images of the train split".
    """
    total = len(set(paths))
    failed: set[str] = set()
    lock = threading.Lock()
    blank = np.zeros((image_size, image_size, 3), np.uint8)

    def read(path):
        path = path.decode("utf-8")
        image, message = try_load_image(path, image_size)
        if image is not None:
            return image, True
        on_error(path, message)
        with lock:
            failed.add(path)
            everything = len(failed) == total
        if everything:
            raise CaptionerError(f"none of the {total} {what} could be read (the last: {message})")
        return blank, False

    def decode(path):
        image, readable = tf.numpy_function(read, [path], [tf.uint8, tf.bool], stateful=False)
        return tf.ensure_shape(image, (image_size, image_size, 3)), tf.ensure_shape(readable, ())

    return tf.data.Dataset.from_tensor_slices(list(paths)).map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


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
    paths: Sequence[str], image_size: int, text: tuple[np.ndarray, np.ndarray], text_key: str, cache: bool,
    on_error: Callable[[str, str], None], what: str,
) -> tf.data.Dataset:
    """Zip decoded images with per-image token arrays: `({"images", text_key}, targets)` elements.

    An unreadable image stays in place as a blank image whose targets are all 0 (padding / `<other>`), which the
    loss and the metrics ignore: it is skipped without changing the number of batches (so the progress bar and
    a mid-epoch resume see the same epoch) and reported once (the cache keeps the verdict).
    """
    images = image_dataset(paths, image_size, on_error, what)
    if cache:
        images = images.cache()  # decoded once, reused every epoch
    pairs = tf.data.Dataset.from_tensor_slices(text)

    def element(image, pair):
        pixels, readable = image
        inputs, targets = pair
        return {"images": pixels, text_key: inputs}, tf.where(readable, targets, tf.zeros_like(targets))

    return tf.data.Dataset.zip(images, pairs).map(element)


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
) -> tf.data.Dataset:
    """Training batches `({"images", "tokens"}, targets)`; unreadable images are skipped (see `image_dataset`).

    images: (batch, image_size, image_size, 3) uint8; tokens and targets: (batch, captions_per_image, steps) int32.
    """
    arrays = caption_arrays(records, vocab, captions_per_image, max_caption_length)
    dataset = _image_and_text_dataset([r.image for r in records], image_size, arrays, "tokens", cache, on_error, what)
    if shuffle:
        dataset = dataset.shuffle(min(len(records), 10_000), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


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
) -> tf.data.Dataset:
    """Training batches `({"images", "questions"}, targets)`; unreadable images are skipped with their questions.

    images: (batch, image_size, image_size, 3) uint8; questions: (batch, questions_per_image, steps) int32;
    targets: (batch, questions_per_image) int32.
    """
    arrays = question_arrays(groups, vocab, answers, questions_per_image, max_question_length)
    dataset = _image_and_text_dataset([image for image, _ in groups], image_size, arrays, "questions", cache, on_error, what)
    if shuffle:
        dataset = dataset.shuffle(min(len(groups), 10_000), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def feature_caption_dataset(
    features: np.ndarray,
    records: Sequence[CaptionRecord],
    vocab: Vocabulary,
    captions_per_image: int,
    max_caption_length: int,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
) -> tf.data.Dataset:
    """Training batches `({"features", "tokens"}, targets)` from cached encoder features (no image decoding).

    features: (num_records, num_pixels, encoder_dim), anything indexed by an integer array: an array, a memory map,
    or `FeatureCache.rows` (gathered from the cache's shards per batch, so the features are never all in memory).
    """
    arrays = caption_arrays(records, vocab, captions_per_image, max_caption_length)
    return _feature_dataset(features, arrays, "tokens", batch_size, shuffle, seed)


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
) -> tf.data.Dataset:
    """Training batches `({"features", "questions"}, targets)` from cached encoder features, one row per question
    group (features: (num_groups, num_pixels, encoder_dim), indexed like `feature_caption_dataset`'s)."""
    arrays = question_arrays(groups, vocab, answers, questions_per_image, max_question_length)
    return _feature_dataset(features, arrays, "questions", batch_size, shuffle, seed)


def _feature_dataset(
    features: np.ndarray, text: tuple[np.ndarray, np.ndarray], text_key: str, batch_size: int, shuffle: bool, seed: int
) -> tf.data.Dataset:
    """`({"features", text_key}, targets)` batches: rows of `features` gathered per batch with the rows of `text`."""
    inputs, targets = text
    num_pixels, encoder_dim = features.shape[1:]

    def gather(indices):
        indices = np.sort(indices)  # sequential reads of a memory map; order inside a batch does not matter
        return features[indices], inputs[indices], targets[indices]

    def load(indices):
        grid, tokens, target = tf.numpy_function(gather, [indices], [tf.as_dtype(features.dtype), tf.int32, tf.int32], stateful=False)
        grid = tf.ensure_shape(grid, (None, num_pixels, encoder_dim))  # (batch, num_pixels, encoder_dim)
        tokens = tf.ensure_shape(tokens, (None, *inputs.shape[1:]))  # (batch, captions, steps) or (batch, questions, steps)
        target = tf.ensure_shape(target, (None, *targets.shape[1:]))  # (batch, captions, steps) or (batch, questions)
        return {"features": grid, text_key: tokens}, target

    dataset = tf.data.Dataset.range(len(inputs))
    if shuffle:
        dataset = dataset.shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
