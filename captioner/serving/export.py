"""`captioner export`: a run as a TensorFlow SavedModel that captions encoded images (or answers a question about
each) with no captioner installed.

The serving signature takes a batch of encoded image files (JPEG, PNG, GIF, BMP bytes) and does everything in
the graph: decoding (the first frame of an animation), resizing to the model's input (bilinear, antialiased,
as Pillow's resize), the encoder, the same greedy or beam search as `captioner caption` (captioner.generation.decoding,
traced here by TensorFlow), and the tokens -> words lookup. TensorFlow Serving loads the directory as it is.

Differences from `captioner caption`, which reads files with Pillow: EXIF orientation is not applied, the
alpha channel is dropped rather than composited on white, and WebP is not decoded; an image whose size is
not the model's input size is resized by TensorFlow, whose pixels may differ from Pillow's by a level or two.
"""

from __future__ import annotations

import io
from pathlib import Path

import keras
import numpy as np

from captioner import __version__
from captioner.config import DecodeConfig
from captioner.errors import CaptionerError
from captioner.fileio import atomic_directory, atomic_path
from captioner.run import Run


def _decoded(images, size: int):
    """Encoded image files (batch,) string -> (batch, size, size, 3) uint8, in the graph: the first frame,
    RGB, resized bilinearly with antialiasing (as Pillow's resize)."""
    import tensorflow as tf

    def decode(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)  # (height, width, 3) uint8
        image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)  # (size, size, 3) float32
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    return tf.map_fn(decode, images, fn_output_signature=tf.TensorSpec((size, size, 3), tf.uint8))


def caption_signature(run: Run, decode: DecodeConfig | None = None):
    """The serving function: images (batch,) string -> captions (batch,) string, tokens (batch, max_length)
    int32, scores (batch,) float32."""
    import tensorflow as tf

    from captioner.tasks.caption import CaptionTask

    generator = CaptionTask().generator(run, decode)
    if generator.sampler.needs_noise:
        raise CaptionerError("export bakes greedy or beam search into the SavedModel; sampling is not exported")
    size = run.model.encoder.image_size
    words = tf.constant(np.array(run.vocab.words, dtype=object))  # (vocab,) string
    vocab = run.vocab

    def serve(images):
        pixels = _decoded(images, size)  # (batch, size, size, 3)
        tokens, scores, *_ = generator.search(pixels)  # (batch, max_length), (batch,)
        # (batch, max_length)
        before_end = tf.equal(tf.cumsum(tf.cast(tf.equal(tokens, vocab.end_id), tf.int32), axis=1), 0)
        shown = before_end & tf.not_equal(tokens, vocab.pad_id) & tf.not_equal(tokens, vocab.start_id)
        captions = tf.strings.reduce_join(
            tf.ragged.boolean_mask(tf.gather(words, tokens), shown), axis=1, separator=" "
        )
        return {"captions": captions, "tokens": tokens, "scores": scores}

    return serve


def vqa_signature(run: Run, top: int = 5):
    """The serving function of a VQA run: images (batch,) string and questions (batch,) string, one question per
    image -> answers (batch,) string, top_answers (batch, top) string, top_probabilities (batch, top) float32.

    The question is tokenised in the graph as `captioner.data.vocab.tokenize` does (lower-case, runs of a-z0-9) and
    cut to the run's max_question_length; unknown words are `<unk>`, a question with no words is one `<unk>`;
    `<other>` is never the answer (as `captioner ask`).
    """
    import tensorflow as tf

    from captioner.data.vocab import AnswerVocabulary

    size = run.model.encoder.image_size
    steps = run.config.vqa.max_question_length
    vocab, answers = run.vocab, run.answers
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(vocab.words[1:]), tf.constant(list(range(1, len(vocab.words))), tf.int32)
        ),
        default_value=vocab.unk_id,
    )
    names = tf.constant(np.array(answers.answers, dtype=object))  # (num_answers,) string
    never_other = np.zeros(len(answers), np.float32)
    never_other[AnswerVocabulary.other_id] = -1e9

    def serve(images, questions):
        pixels = _decoded(images, size)  # (batch, size, size, 3)
        words = tf.strings.split(
            tf.strings.strip(tf.strings.regex_replace(tf.strings.lower(questions), "[^a-z0-9]+", " "))
        )
        ids = table.lookup(words[:, :steps]).to_tensor(default_value=0, shape=(None, steps))  # (batch, steps)
        empty = tf.equal(ids[:, :1], 0)  # (batch, 1) a question with no words
        ids = tf.concat([tf.where(empty, vocab.unk_id, ids[:, :1]), ids[:, 1:]], axis=1)
        logits, _ = run.model.answer(pixels, ids[:, None, :], training=False)  # (batch, 1, num_answers)
        probabilities = tf.nn.softmax(tf.cast(logits[:, 0], tf.float32) + never_other)  # (batch, num_answers)
        best, index = tf.math.top_k(probabilities, k=min(top, len(answers)))  # (batch, top)
        return {
            "answers": tf.gather(names, index[:, 0]),
            "top_answers": tf.gather(names, index),
            "top_probabilities": best,
        }

    return serve, table


def export_run(run: Run, out: str | Path, decode: DecodeConfig | None = None) -> Path:
    """Write `run` as a SavedModel directory at `out` (atomically: a failed export leaves nothing half-written).

    A caption run takes images; a VQA run takes images and one question per image. The export needs the
    TensorFlow backend (the run itself may come from either).
    """
    if keras.backend.backend() != "tensorflow":
        raise CaptionerError(
            "export writes a TensorFlow SavedModel: run it with KERAS_BACKEND=tensorflow "
            "(a run trained under JAX loads there as it is)"
        )
    if run.config.task not in ("caption", "vqa"):
        raise CaptionerError(f"{run.path} is a {run.config.task} run; export handles caption and vqa runs")
    import tensorflow as tf

    if not run.model.built:  # a loaded model's weights are in place; Keras may not have set the flag
        run.model.build()
    archive = keras.export.ExportArchive()
    archive.track(run.model)
    images = tf.TensorSpec((None,), tf.string, name="images")
    if run.config.task == "caption":
        archive.add_endpoint("serving_default", caption_signature(run, decode), input_signature=[images])
    else:
        serve, table = vqa_signature(run)
        archive.track(table)
        archive.add_endpoint(
            "serving_default", serve, input_signature=[images, tf.TensorSpec((None,), tf.string, name="questions")]
        )
    out = Path(out)
    try:
        with atomic_directory(out) as tmp:
            archive.write_out(str(tmp), verbose=False)
    except OSError as exc:  # e.g. a file where a folder on the way should be, or no write permission
        raise CaptionerError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def tflite_models(run: Run, hard_context: str = "expectation") -> dict[str, bytes]:
    """A caption run as two TFLite (LiteRT) models, the usual way around the converter's trouble with LSTM
    loops: `encoder.tflite` (images (1, size, size, 3) uint8 -> state and, with attention, grid and projected
    grid) and `step.tflite` (one word for one image: tokens (1,), state[, grid, projected] -> logits, state). The
    state is the decoder's, whatever its cell and depth, stacked: (1, state_count, hidden) - (h, c) for one LSTM
    layer, (h1, c1, h2, c2) for two, (h) for one GRU layer. A hard-attention run's step reads `hard_context`.
    Outputs are named output_0, output_1, ... in that order. Weights are frozen into constants first: left as
    resource variables, the converted models read uninitialised variables (NaN)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    model, decoder = run.model, run.model.decoder
    size, hidden, count = model.encoder.image_size, decoder.hidden_dim, decoder.state_count

    @tf.function(input_signature=[tf.TensorSpec((1, size, size, 3), tf.uint8)])
    def encode(images):
        grid, pooled = model.encode(images)
        return (
            tf.stack(decoder.initial_state(pooled, grid), axis=1),
            *decoder.memory(grid),
        )  # state (1, count, hidden)

    specs = [tf.TensorSpec((1,), tf.int32), tf.TensorSpec((1, count, hidden), tf.float32)]
    if decoder.uses_attention:
        pixels, channels = model.encoder.num_pixels, model.encoder.encoder_dim

        @tf.function(
            input_signature=specs
            + [
                tf.TensorSpec((1, pixels, channels), tf.float32),
                tf.TensorSpec((1, pixels, decoder.attention_dim), tf.float32),
            ]
        )
        def step(tokens, state, grid, projected):
            logits, state, _ = decoder.step(tokens, tuple(tf.unstack(state, axis=1)), (grid, projected), hard_context)
            return logits, tf.stack(state, axis=1)
    else:

        @tf.function(input_signature=specs)
        def step(tokens, state):
            logits, state, _ = decoder.step(tokens, tuple(tf.unstack(state, axis=1)))
            return logits, tf.stack(state, axis=1)

    def convert(function) -> bytes:
        frozen = convert_variables_to_constants_v2(function.get_concrete_function())
        try:
            return tf.lite.TFLiteConverter.from_concrete_functions([frozen], model).convert()
        except Exception as exc:  # the converter's errors are multi-line MLIR dumps: one line, and what to do
            first = next(
                (line.strip() for line in str(exc).splitlines() if "error" in line.lower()), type(exc).__name__
            )
            raise CaptionerError(
                f"TFLite cannot convert {run.path} computed in {model.compute_dtype} ({first[:200]}); "
                f"load the run at float32 (captioner export does)"
            ) from None

    return {"encoder.tflite": convert(encode), "step.tflite": convert(step)}


def export_tflite(run: Run, out: str | Path, hard_context: str = "expectation") -> Path:
    """`tflite_models` written to the folder `out` (atomically) with `tflite.json`: what a greedy loop over
    them needs (image size, max_length, the start and end ids, the ids never to emit, the words)."""
    if keras.backend.backend() != "tensorflow":
        raise CaptionerError("export writes TensorFlow Lite models: run it with KERAS_BACKEND=tensorflow")
    if run.config.task != "caption":
        raise CaptionerError(f"{run.path} is a {run.config.task} run; --format tflite exports caption runs")
    import json

    if hard_context != "expectation" and not run.model.decoder.hard:
        raise CaptionerError(f"--hard-context {hard_context} is for hard-attention runs; {run.path} has none")
    models = tflite_models(run, hard_context)
    vocab = run.vocab
    spec = {
        "image_size": run.model.encoder.image_size,
        "max_length": run.config.decode.max_length,
        "attention": run.model.decoder.uses_attention,
        "hard_context": hard_context if run.model.decoder.hard else None,
        "start_id": vocab.start_id,
        "end_id": vocab.end_id,
        "never": [vocab.pad_id, vocab.start_id, vocab.unk_id],
        "words": vocab.words,
    }
    out = Path(out)
    try:
        with atomic_directory(out) as tmp:
            for name, data in models.items():
                (tmp / name).write_bytes(data)
            (tmp / "tflite.json").write_text(json.dumps(spec), encoding="utf-8")
    except OSError as exc:
        raise CaptionerError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def tflite_greedy(folder: str | Path, images: np.ndarray) -> list[str]:
    """Greedy captions from an `export_tflite` folder, one image at a time: the loop an app would write."""
    import json

    import tensorflow as tf

    folder = Path(folder)
    spec = json.loads((folder / "tflite.json").read_text(encoding="utf-8"))
    encoder = tf.lite.Interpreter(model_path=str(folder / "encoder.tflite")).get_signature_runner()
    step = tf.lite.Interpreter(model_path=str(folder / "step.tflite")).get_signature_runner()
    never = np.zeros(len(spec["words"]), np.float32)
    never[spec["never"]] = -1e9
    captions = []
    for image in images:
        encoded = encoder(images=image[None])
        state = encoded["output_0"]  # (1, state_count, hidden)
        memory = {"grid": encoded["output_1"], "projected": encoded["output_2"]} if spec["attention"] else {}
        token, words = spec["start_id"], []
        for _ in range(spec["max_length"]):
            out = step(tokens=np.array([token], np.int32), state=state, **memory)
            state = out["output_1"]
            token = int(np.argmax(out["output_0"][0] + never))
            if token == spec["end_id"]:
                break
            words.append(spec["words"][token])
        captions.append(" ".join(words))
    return captions


def tflite_encoder(run: Run) -> bytes:
    """The run's encoder as one float32 TFLite model: images (1, size, size, 3) uint8 -> output_0 grid
    (1, num_pixels, encoder_dim), output_1 pooled (1, pooled_dim). Not float16: the converter folds the batch norms
    into the convolutions and would round the folded weights, which moved EfficientNet-Lite2's grid by up to 0.17
    (of 6) from the Keras encoder's and changed 3 of 18 captions; float32 keeps both paths' captions the same."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    model, size = run.model, run.model.encoder.image_size

    @tf.function(input_signature=[tf.TensorSpec((1, size, size, 3), tf.uint8, name="images")])
    def encode(images):
        grid, pooled = model.encoder(images, training=False)
        return grid, pooled

    frozen = convert_variables_to_constants_v2(encode.get_concrete_function())
    return tf.lite.TFLiteConverter.from_concrete_functions([frozen], model).convert()


def export_pretrained(
    caption: Run, vqa: Run, out: str | Path, decode: DecodeConfig | None = None, sources: dict | None = None
) -> Path:
    """Write the folder `captioner/pretrained` ships (its docstring): one encoder.tflite for both runs, each run's
    settings, vocabularies and float16 weights, manifest.json. The two runs must share their encoder (the same network
    and
    input, the same weights); `decode` replaces the caption run's decode settings; `sources` goes into the manifest."""
    import dataclasses
    import hashlib
    import json

    from captioner import pretrained
    from captioner.run import encoder_from_package, shipped_variables

    if caption.config.task != "caption" or vqa.config.task != "vqa":
        raise CaptionerError("export_pretrained takes a caption run and a VQA run")
    if caption.model.encoder.get_config() != vqa.model.encoder.get_config():
        raise CaptionerError(f"{caption.path} and {vqa.path} have different encoders; the shipped models share one")
    for a, b in zip(caption.model.encoder.weights, vqa.model.encoder.weights):
        if not np.array_equal(np.asarray(a), np.asarray(b)):
            raise CaptionerError(
                f"{caption.path} and {vqa.path} hold different encoder weights ({a.path}); the shipped models share one"
            )
    out = Path(out)
    files: dict[str, bytes] = {pretrained.ENCODER_FILE: tflite_encoder(caption)}
    for run, task in ((caption, "caption"), (vqa, "vqa")):
        config = run.config if task == "vqa" or decode is None else dataclasses.replace(run.config, decode=decode)
        files[f"{task}/config.json"] = (
            json.dumps({"captioner_version": __version__, **config.to_dict()}, indent=2) + "\n"
        ).encode()
        files[f"{task}/vocab.json"] = (run.path / "vocab.json").read_bytes()
        if task == "vqa":
            files[f"{task}/answers.json"] = (run.path / "answers.json").read_bytes()
        packed = encoder_from_package(run.config.model)
        arrays = {
            name: np.asarray(v).astype(np.float16) if np.issubdtype(np.asarray(v).dtype, np.floating) else np.asarray(v)
            for name, v in shipped_variables(run.model).items()
            if not (packed and name.startswith("encoder/"))
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        files[f"{task}/{pretrained.WEIGHTS_FILE}"] = buffer.getvalue()
    manifest = {
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "sources": sources or {"caption": str(caption.path), "vqa": str(vqa.path)},
    }
    files[pretrained.MANIFEST] = (json.dumps(manifest, indent=2) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    try:
        for (
            name,
            data,
        ) in files.items():  # each file atomically; the manifest last, so a half-written folder does not verify
            path = out / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Path(tmp).write_bytes(data)
    except OSError as exc:
        raise CaptionerError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out
