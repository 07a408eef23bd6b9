"""The shipped models without TensorFlow or Keras: the encoder on LiteRT, the decoder and the VQA head in numpy.

`captioner caption photo.jpg` and `captioner ask photo.jpg "..."` with no `--run` take this path: it imports numpy,
Pillow and `ai_edge_litert` only, so a caption costs the encoder's ~0.1 s, not TensorFlow's seconds of start-up.
The encoder is a TFLite file (EfficientNet-Lite2 with float16 weights); what follows it is a few matrix products per
word, which numpy does in milliseconds, from the same `weights.npz` the Keras path loads (`captioner.pretrained`).

What it computes is what `RNNDecoder.step`, `CaptionGenerator` (greedy and beam search: the same bans, length
penalty, tie-breaking and `<end>` handling as `captioner.generation.samplers`) and `VQAModel.answer` compute; a test
checks the captions and answers against the Keras path. Supported: LSTM decoders of 1-4 layers, with or without
soft attention; VQA heads without attention. Anything else (sampling, GRU, hard attention) is the Keras path's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captioner.config import DecodeConfig, RunConfig
from captioner.data.images import read_image
from captioner.data.vocab import AnswerVocabulary, Vocabulary, tokenize
from captioner.errors import CaptionerError
from captioner.pretrained import RESTORE

NEVER = -1e9  # what a banned word's logit gains (as captioner.generation.decoding)
LAYER_NORM_EPSILON = 1e-3  # keras.layers.LayerNormalization's and BatchNormalization's default


def _sigmoid(x):
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x < -88: the sigmoid is 0 there, as it should be
        return 1.0 / (1.0 + np.exp(-x))


def _log_softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _layer_norm(x, gamma, beta):
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + LAYER_NORM_EPSILON) * gamma + beta


def _lstm(x, h, c, kernel, recurrent, bias):
    """One Keras LSTM cell step (gates i, f, c, o; sigmoid and tanh): x (n, in), h, c (n, hidden) -> h, c."""
    z = x @ kernel + h @ recurrent + bias  # (n, 4 * hidden)
    i, f, g, o = np.split(z, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c), c


def _config(folder: Path) -> RunConfig:
    payload = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    payload.pop("captioner_version", None)
    return RunConfig.from_dict(payload)


def _weights(folder: Path, prefix: str) -> dict[str, np.ndarray]:
    """The npz's float16 arrays as float32, the `prefix/` of each name taken off."""
    with np.load(folder / "weights.npz", allow_pickle=False) as stored:
        return {
            name[len(prefix) + 1 :]: stored[name].astype(np.float32)
            for name in stored.files
            if name.startswith(prefix + "/")
        }


@contextlib.contextmanager
def _native_stderr_muted():
    """LiteRT's C++ side prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on file descriptor 2 when an
    interpreter is made: muted there, so a caption is the only line a user sees. Python errors still come through
    (raised)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class LiteEncoder:
    """encoder.tflite on LiteRT: images (size, size, 3) uint8 -> grid (num_pixels, channels), pooled (channels,)."""

    def __init__(self, path: Path, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise CaptionerError(
                "the fast path needs ai-edge-litert (pip install ai-edge-litert); or add --engine keras"
            ) from None
        try:
            with _native_stderr_muted():
                self.runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner()
        except (ValueError, RuntimeError) as exc:  # a damaged flatbuffer
            raise CaptionerError(f"cannot read {path} ({str(exc).strip().splitlines()[0][:200]}); {RESTORE}") from None
        self.image_size = int(self.runner.get_input_details()["images"]["shape"][1])

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with _native_stderr_muted():  # the delegate is made, and says so, at the first call
            out = self.runner(images=np.asarray(image, np.uint8)[None])
        return out["output_0"][0], out["output_1"][0]  # (num_pixels, channels), (channels,)


def supported(config: RunConfig) -> str | None:
    """Why the fast path cannot run this model (None: it can)."""
    model = config.model
    if config.task == "caption" and (
        model.cell != "lstm" or (model.decoder == "attention" and model.attention != "soft")
    ):
        return f"a {model.cell} decoder with {model.attention} attention"
    if config.task == "vqa" and config.vqa.attention:
        return "a VQA head with attention"
    return None


def check_limits(decode: DecodeConfig) -> None:
    """The checks every search shares (this path and `generation.decoding.make_sampler`): one line each."""
    if decode.min_length < 0 or decode.no_repeat_ngram < 0 or decode.no_repeat_ngram == 1:
        raise CaptionerError("--min-length must be 0 or more, --no-repeat-ngram 0 (off) or 2 and more")
    if decode.max_length < 1:
        raise CaptionerError(f"max_length must be at least 1 (got {decode.max_length})")


def check_decode(decode: DecodeConfig) -> str:
    """The search a DecodeConfig asks for, "greedy" or "beam", or one line on what the fast path cannot do."""
    check_limits(decode)
    name = decode.sampler if decode.sampler != "auto" else ("beam" if decode.beam_size > 1 else "greedy")
    if name not in ("greedy", "beam"):
        raise CaptionerError(f"the fast path searches (greedy, beam); --sampler {name} needs --engine keras")
    if decode.hard_context != "expectation":
        raise CaptionerError(
            f"--hard-context {decode.hard_context} is for hard-attention runs; the shipped decoder has soft attention"
        )
    if name == "greedy" and decode.num_captions != 1:
        raise CaptionerError("greedy decoding gives one caption: use --sampler beam for --num-captions")
    if name == "beam" and not 1 <= decode.num_captions <= decode.beam_size:
        raise CaptionerError(
            f"--num-captions {decode.num_captions} is more than the beam holds ({decode.beam_size}); "
            f"raise --beam-size or ask for fewer"
        )
    return name


class LiteCaptioner:
    """The shipped caption model: `encoder` + the decoder of `folder` (config.json, vocab.json, weights.npz)."""

    def __init__(self, folder: Path, encoder: LiteEncoder):
        self.config = _config(folder)
        if why := supported(self.config):
            raise CaptionerError(f"the fast path does not run {why}; add --engine keras")
        self.vocab = Vocabulary.load(folder / "vocab.json")
        self.encoder = encoder
        w = _weights(folder, "decoder")
        model = self.config.model
        self.layers = model.num_layers
        suffixes = [""] + [f"_{i + 1}" for i in range(1, self.layers)]
        self.init = [
            (w[f"init_h{s}/kernel"], w[f"init_h{s}/bias"], w[f"init_c{s}/kernel"], w[f"init_c{s}/bias"])
            for s in suffixes
        ]
        self.cells = [
            (w[f"lstm{s}/lstm_cell/kernel"], w[f"lstm{s}/lstm_cell/recurrent_kernel"], w[f"lstm{s}/lstm_cell/bias"])
            for s in suffixes
        ]
        self.norm = w["pooled_norm/gamma"], w["pooled_norm/beta"]
        self.embedding = w["embedding/embeddings"]  # (vocab, embedding_dim)
        self.output = w["output_projection/kernel"], w["output_projection/bias"]
        self.attention = model.decoder == "attention"
        self.grid_mean = model.state_init == "grid_mean"
        if self.attention:
            self.project = w["attention/encoder_projection/kernel"], w["attention/encoder_projection/bias"]
            self.query = w["attention/decoder_projection/kernel"], w["attention/decoder_projection/bias"]
            self.score = w["attention/score/kernel"][:, 0], w["attention/score/bias"][0]
            self.gate = w["gate/kernel"], w["gate/bias"]
        self.banned = np.zeros(len(self.vocab), np.float32)
        self.banned[[self.vocab.pad_id, self.vocab.start_id, self.vocab.unk_id]] = NEVER

    def start(self, grid: np.ndarray, pooled: np.ndarray, rows: int):
        """The state (h1, c1, ...) each (rows, hidden) and the memory (grid, projected grid), repeated for `rows`."""
        image = _layer_norm(grid.mean(axis=0) if self.grid_mean else pooled, *self.norm)  # (image_dim,)
        state = [
            np.repeat((image @ k + b)[None], rows, axis=0)
            for kh, bh, kc, bc in self.init
            for k, b in ((kh, bh), (kc, bc))
        ]
        memory = (grid, grid @ self.project[0] + self.project[1]) if self.attention else None  # (P, C), (P, A)
        return state, memory

    def step(
        self, tokens: np.ndarray, state: list[np.ndarray], memory
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """tokens (n,) -> logits (n, vocab), the new state, attention (n, num_pixels) (or (n, 0))."""
        x = self.embedding[tokens]  # (n, embedding_dim)
        alpha = np.zeros((len(tokens), 0), np.float32)
        if memory is not None:
            grid, projected = memory  # (P, C), (P, A): the same image for every row
            h = state[-2]  # (n, hidden): the top layer's previous hidden state asks
            energy = (
                np.tanh(projected[None] + (h @ self.query[0] + self.query[1])[:, None, :]) @ self.score[0]
                + self.score[1]
            )  # (n, P)
            alpha = np.exp(energy - energy.max(axis=-1, keepdims=True))
            alpha /= alpha.sum(axis=-1, keepdims=True)  # (n, P)
            context = (alpha @ grid) * _sigmoid(h @ self.gate[0] + self.gate[1])  # (n, C)
            x = np.concatenate([x, context], axis=-1)
        new_state = []
        for i, (kernel, recurrent, bias) in enumerate(self.cells):
            x, c = _lstm(x, state[2 * i], state[2 * i + 1], kernel, recurrent, bias)  # (n, hidden)
            new_state += [x, c]
        return x @ self.output[0] + self.output[1], new_state, alpha

    def _process(self, logits, sequences, t, decode: DecodeConfig):
        """The bans of `CaptionGenerator._process`: <pad> <start> <unk>; <end> before min_length; repeated n-grams."""
        logits = logits + self.banned
        if t < decode.min_length:
            logits[:, self.vocab.end_id] += NEVER
        n = decode.no_repeat_ngram
        if n and t >= n:
            for row, sequence in enumerate(sequences):
                prefix = list(sequence[t - n + 1 : t])
                for i in range(t - n + 1):
                    if list(sequence[i : i + n - 1]) == prefix:
                        logits[row, sequence[i + n - 1]] += NEVER
        return logits

    def search(self, image: np.ndarray, decode: DecodeConfig) -> dict[str, Any]:
        """One uint8 image -> {"tokens" (max_length,), "score", "attention" (max_length, num_pixels), "beams"}."""
        name = check_decode(decode)
        grid, pooled = self.encoder(image)
        k = decode.beam_size if name == "beam" else 1
        state, memory = self.start(grid, pooled, k)
        steps, vocab = decode.max_length, len(self.vocab)
        tokens = np.full(k, self.vocab.start_id)
        sequences = np.zeros((k, steps), np.int64)
        attentions = np.zeros((k, steps, len(grid) if memory is not None else 0), np.float32)
        finished = np.zeros(k, bool)
        scores = np.array([0.0] + [NEVER] * (k - 1), np.float32)  # only beam 0 is live at the start
        lengths = np.zeros(k, np.float32)
        pad_only = np.full(vocab, NEVER, np.float32)
        pad_only[self.vocab.pad_id] = 0.0
        for t in range(steps):
            if finished.all():
                break
            logits, state, alpha = self.step(tokens, state, memory)
            log_probs = _log_softmax(self._process(logits, sequences, t, decode))  # (k, vocab)
            log_probs = np.where(finished[:, None], pad_only, log_probs)  # a finished row emits <pad> at no cost
            candidates = (scores[:, None] + log_probs).reshape(-1)  # (k * vocab,)
            index = np.argsort(-candidates, kind="stable")[:k]  # top_k: the lower index first among equals
            scores = candidates[index].astype(np.float32)
            rows, tokens = index // vocab, index % vocab
            state = [s[rows] for s in state]
            was_finished = finished[rows]
            lengths = lengths[rows] + ~was_finished
            sequences = sequences[rows]
            sequences[:, t] = tokens
            attentions = attentions[rows]
            attentions[:, t] = np.where(was_finished[:, None], 0.0, alpha[rows])
            finished = was_finished | (tokens == self.vocab.end_id)
        # greedy: the sum
        normalised = scores / np.maximum(lengths, 1.0) ** (decode.length_penalty if name == "beam" else 0.0)
        order = np.argsort(-normalised, kind="stable")
        beams = [(self.vocab.decode(sequences[i]), float(normalised[i])) for i in order]
        best = order[0]
        return {
            "tokens": sequences[best],
            "score": float(normalised[best]),
            "attention": attentions[best],
            "beams": beams,
        }

    def caption_files(
        self, paths: Sequence[str], decode: DecodeConfig, attention_out: str | None = None
    ) -> list[dict[str, Any]]:
        """As `captioner.tasks.caption.caption_files`, one image at a time."""
        check_decode(decode)
        if attention_out is not None and not self.attention:
            raise CaptionerError("the shipped caption model has no attention weights")
        results: list[dict[str, Any]] = []
        for path in paths:
            result: dict[str, Any] = {"image": path}
            results.append(result)
            try:
                image, (width, height) = read_image(path, self.encoder.image_size)
            except CaptionerError as exc:
                result["error"] = str(exc)
                continue
            found = self.search(image, decode)
            result.update(width=width, height=height, caption=self.vocab.decode(found["tokens"]), score=found["score"])
            if decode.num_captions > 1:
                result["candidates"] = [{"caption": c, "score": s} for c, s in found["beams"][: decode.num_captions]]
            if attention_out is not None:
                from captioner.viz import attention_figure, attention_path

                picture = attention_path(attention_out, path, single=len(paths) == 1)
                words = self.vocab.words_through_end(found["tokens"])
                side = int(round(len(found["attention"][0]) ** 0.5))
                attention_figure(image, words, found["attention"][: len(words)], (side, side), picture)
                result["attention_map"] = str(picture)
        return results


class LiteAnswerer:
    """The shipped VQA model: `encoder` + the question encoder and head of `folder`."""

    def __init__(self, folder: Path, encoder: LiteEncoder):
        self.config = _config(folder)
        if why := supported(self.config):
            raise CaptionerError(f"the fast path does not run {why}; add --engine keras")
        self.vocab = Vocabulary.load(folder / "vocab.json")
        self.answers = AnswerVocabulary.load(folder / "answers.json")
        self.encoder = encoder
        self.max_question_length = self.config.vqa.max_question_length
        q, h = _weights(folder, "question_encoder"), _weights(folder, "vqa_head")
        self.embedding = q["embedding/embeddings"]
        self.cell = q["lstm/lstm_cell/kernel"], q["lstm/lstm_cell/recurrent_kernel"], q["lstm/lstm_cell/bias"]
        self.h = h
        self.never_other = np.zeros(len(self.answers), np.float32)
        self.never_other[AnswerVocabulary.other_id] = NEVER

    def _image(self, pooled: np.ndarray) -> np.ndarray:
        """`VQAHead._image_vector` in inference: normalised, the hidden ReLU layer, projected with tanh."""
        h, norm = self.h, self.config.vqa.image_norm
        if norm == "layer":
            x = _layer_norm(pooled, h["image_norm/gamma"], h["image_norm/beta"])
        elif norm == "batch":
            x = (pooled - h["image_norm/moving_mean"]) / np.sqrt(
                h["image_norm/moving_variance"] + LAYER_NORM_EPSILON
            ) * h["image_norm/gamma"] + h["image_norm/beta"]
        else:
            x = pooled / (np.linalg.norm(pooled) + 1e-6)
        if "image_hidden/kernel" in h:
            x = np.maximum(x @ h["image_hidden/kernel"] + h["image_hidden/bias"], 0.0)
        return np.tanh(x @ h["image_projection/kernel"] + h["image_projection/bias"])

    def probabilities(self, pooled: np.ndarray, ids: list[int]) -> np.ndarray:
        """One question's word ids (not empty) about an image's pooled vector -> (num_answers,) probabilities."""
        hidden = self.cell[1].shape[0]
        state, c = np.zeros((1, hidden), np.float32), np.zeros((1, hidden), np.float32)
        for token in ids:  # the masked Keras LSTM over a zero-padded question: its words only
            state, c = _lstm(self.embedding[token][None], state, c, *self.cell)
        h = self.h
        query = np.tanh(state[0] @ h["question_projection/kernel"] + h["question_projection/bias"])  # (fusion_dim,)
        image = self._image(pooled)
        fused = query * image if self.config.vqa.fusion == "multiply" else np.concatenate([query, image])
        hidden_layer = np.maximum(fused @ h["hidden/kernel"] + h["hidden/bias"], 0.0)
        logits = hidden_layer @ h["classifier/kernel"] + h["classifier/bias"] + self.never_other
        e = np.exp(logits - logits.max())
        return e / e.sum()

    def ask(self, image_path: str, questions: Sequence[str], top: int = 5) -> dict[str, Any]:
        """As `captioner.tasks.vqa.ask`."""
        image, (width, height) = read_image(image_path, self.encoder.image_size)
        _, pooled = self.encoder(image)
        results: list[dict[str, Any]] = []
        for question in questions:
            result: dict[str, Any] = {"question": question}
            results.append(result)
            words = tokenize(question)
            ids = self.vocab.encode(question, self.max_question_length)
            if not ids:
                result["error"] = f'question {question!r} has no words; ask something, e.g. "is there a dog ?"'
                continue
            unknown = [w for w, i in zip(words, ids) if i == self.vocab.unk_id]
            if len(words) > self.max_question_length:
                result["warning"] = (
                    f"question of {len(words):,} words; this model reads the first {self.max_question_length} "
                    f"(its longest training question)"
                )
            elif unknown and len(unknown) == len(ids):
                result["warning"] = (
                    f"no word of {question!r} is known to this model; the answer rests on the image alone"
                )
            elif unknown:
                result["warning"] = f"word(s) of {question!r} this model never saw, read as <unk>: {', '.join(unknown)}"
            distribution = self.probabilities(pooled, ids)
            order = [int(i) for i in np.argsort(-distribution)[:top] if int(i) != AnswerVocabulary.other_id]
            best = [(self.answers.answers[i], float(distribution[i])) for i in order]
            result.update(answer=best[0][0], top=[{"answer": a, "probability": p} for a, p in best])
        return {"image": image_path, "width": width, "height": height, "answers": results}


def decode_settings(config: RunConfig, **given) -> DecodeConfig:
    """The shipped decode settings with the command line's flags (already filtered to those given)."""
    return dataclasses.replace(config.decode, **given)
