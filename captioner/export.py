"""`captioner export`: a run as a TensorFlow SavedModel that captions encoded images (or answers a question about
each) with no captioner installed.

The serving signature takes a batch of encoded image files (JPEG, PNG, GIF, BMP bytes) and does everything in
the graph: decoding (the first frame of an animation), resizing to the model's input (bilinear, antialiased,
as Pillow's resize), the encoder, the same greedy or beam search as `captioner caption` (captioner.decoding,
traced here by TensorFlow), and the tokens -> words lookup. TensorFlow Serving loads the directory as it is.

Differences from `captioner caption`, which reads files with Pillow: EXIF orientation is not applied, the
alpha channel is dropped rather than composited on white, and WebP is not decoded; an image whose size is
not the model's input size is resized by TensorFlow, whose pixels may differ from Pillow's by a level or two.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from captioner.errors import CaptionerError
from captioner.fileio import atomic_directory
from captioner.run import Run


def caption_signature(run: Run, beam_size: int | None = None, length_penalty: float | None = None):
    """The serving function: images (batch,) string -> captions (batch,) string, tokens (batch, max_length)
    int32, scores (batch,) float32."""
    import tensorflow as tf

    from captioner.tasks.caption import CaptionTask

    generator = CaptionTask().generator(run, beam_size, length_penalty)
    size = run.model.encoder.image_size
    words = tf.constant(np.array(run.vocab.words, dtype=object))  # (vocab,) string
    vocab = run.vocab

    def decode(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)  # (height, width, 3) uint8
        image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)  # (size, size, 3) float32
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    def serve(images):
        pixels = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec((size, size, 3), tf.uint8))  # (batch, size, size, 3)
        tokens, scores, _ = generator.search(pixels)  # (batch, max_length), (batch,)
        before_end = tf.equal(tf.cumsum(tf.cast(tf.equal(tokens, vocab.end_id), tf.int32), axis=1), 0)  # (batch, max_length)
        shown = before_end & tf.not_equal(tokens, vocab.pad_id) & tf.not_equal(tokens, vocab.start_id)
        captions = tf.strings.reduce_join(tf.ragged.boolean_mask(tf.gather(words, tokens), shown), axis=1, separator=" ")
        return {"captions": captions, "tokens": tokens, "scores": scores}

    return serve


def vqa_signature(run: Run, top: int = 5):
    """The serving function of a VQA run: images (batch,) string and questions (batch,) string, one question per
    image -> answers (batch,) string, top_answers (batch, top) string, top_probabilities (batch, top) float32.

    The question is tokenised in the graph as `captioner.vocab.tokenize` does (lower-case, runs of a-z0-9) and
    cut to the run's max_question_length; unknown words are `<unk>`, a question with no words is one `<unk>`;
    `<other>` is never the answer (as `captioner ask`).
    """
    import tensorflow as tf

    from captioner.vocab import AnswerVocabulary

    size = run.model.encoder.image_size
    steps = run.config.vqa.max_question_length
    vocab, answers = run.vocab, run.answers
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(vocab.words[1:]), tf.constant(list(range(1, len(vocab.words))), tf.int32)),
        default_value=vocab.unk_id)
    names = tf.constant(np.array(answers.answers, dtype=object))  # (num_answers,) string
    never_other = np.zeros(len(answers), np.float32)
    never_other[AnswerVocabulary.other_id] = -1e9

    def decode(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)  # (height, width, 3) uint8
        image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    def serve(images, questions):
        pixels = tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec((size, size, 3), tf.uint8))  # (batch, size, size, 3)
        words = tf.strings.split(tf.strings.strip(tf.strings.regex_replace(tf.strings.lower(questions), "[^a-z0-9]+", " ")))
        ids = table.lookup(words[:, :steps]).to_tensor(default_value=0, shape=(None, steps))  # (batch, steps)
        empty = tf.equal(ids[:, :1], 0)  # (batch, 1) a question with no words
        ids = tf.concat([tf.where(empty, vocab.unk_id, ids[:, :1]), ids[:, 1:]], axis=1)
        logits, _ = run.model.answer(pixels, ids[:, None, :], training=False)  # (batch, 1, num_answers)
        probabilities = tf.nn.softmax(tf.cast(logits[:, 0], tf.float32) + never_other)  # (batch, num_answers)
        best, index = tf.math.top_k(probabilities, k=min(top, len(answers)))  # (batch, top)
        return {"answers": tf.gather(names, index[:, 0]), "top_answers": tf.gather(names, index), "top_probabilities": best}

    return serve, table


def export_run(run: Run, out: str | Path, beam_size: int | None = None, length_penalty: float | None = None) -> Path:
    """Write `run` as a SavedModel directory at `out` (atomically: a failed export leaves nothing half-written).

    A caption run takes images; a VQA run takes images and one question per image. The export needs the
    TensorFlow backend (the run itself may come from either).
    """
    if keras.backend.backend() != "tensorflow":
        raise CaptionerError("export writes a TensorFlow SavedModel: run it with KERAS_BACKEND=tensorflow "
                             "(a run trained under JAX loads there as it is)")
    if run.config.task not in ("caption", "vqa"):
        raise CaptionerError(f"{run.path} is a {run.config.task} run; export handles caption and vqa runs")
    import tensorflow as tf

    if not run.model.built:  # a loaded model's weights are in place; Keras may not have set the flag
        run.model.build()
    archive = keras.export.ExportArchive()
    archive.track(run.model)
    images = tf.TensorSpec((None,), tf.string, name="images")
    if run.config.task == "caption":
        archive.add_endpoint("serving_default", caption_signature(run, beam_size, length_penalty), input_signature=[images])
    else:
        serve, table = vqa_signature(run)
        archive.track(table)
        archive.add_endpoint("serving_default", serve, input_signature=[images, tf.TensorSpec((None,), tf.string, name="questions")])
    out = Path(out)
    try:
        with atomic_directory(out) as tmp:
            archive.write_out(str(tmp), verbose=False)
    except OSError as exc:  # e.g. a file where a folder on the way should be, or no write permission
        raise CaptionerError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out
