"""`captioner export`: a run as a TensorFlow SavedModel that captions encoded images with no captioner installed.

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


def export_run(run: Run, out: str | Path, beam_size: int | None = None, length_penalty: float | None = None) -> Path:
    """Write `run` as a SavedModel directory at `out` (atomically: a failed export leaves nothing half-written).

    Caption runs only; the export needs the TensorFlow backend (the run itself may come from either).
    """
    if keras.backend.backend() != "tensorflow":
        raise CaptionerError("export writes a TensorFlow SavedModel: run it with KERAS_BACKEND=tensorflow "
                             "(a run trained under JAX loads there as it is)")
    if run.config.task != "caption":
        raise CaptionerError(f"{run.path} is a {run.config.task} run; export handles caption runs (VQA export is not built yet)")
    import tensorflow as tf

    if not run.model.built:  # a loaded model's weights are in place; Keras may not have set the flag
        run.model.build()
    archive = keras.export.ExportArchive()
    archive.track(run.model)
    archive.add_endpoint("serving_default", caption_signature(run, beam_size, length_penalty),
                         input_signature=[tf.TensorSpec((None,), tf.string, name="images")])
    out = Path(out)
    with atomic_directory(out) as tmp:
        archive.write_out(str(tmp), verbose=False)
    return out
