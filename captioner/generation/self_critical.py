"""Self-critical sequence training (Rennie et al. 2017): what one step needs besides the optimizer.

For a batch of images `SelfCritic.step_arrays` samples K captions per image with the model as it is now
(one compiled search, `RandomSampler` at temperature 1 with the same bans as decoding), scores them with
CIDEr-D against the image's references (`captioner.cider`, document frequencies from the training
references, `<end>` kept in both, as self-critical.pytorch does), subtracts a baseline (the greedy caption's
CIDEr-D, or the mean of the image's other samples, Luo 2020), and returns the samples as teacher-forcing inputs,
targets and per-token weights `advantage / tokens in the batch`. Cross-entropy summed with those weights is
-sum(advantage * log p(sample)): its gradient is the policy gradient, so `Model.train_on_batch` takes the step
on every backend. The log-probabilities are recomputed by the teacher-forced pass rather than kept from the
search; with dropout off (SCST runs set `model.dropout_rate` 0) both are the same policy.

`SelfCritic.greedy_cider` decodes a split greedily and scores it with CIDEr-D whose document frequencies come
from that split's references, which is pycocoevalcap's CIDEr: the number early stopping watches ("val_cider").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from captioner import backend
from captioner.cider import CiderD, words_to_ids
from captioner.config import DecodeConfig
from captioner.data.vocab import Vocabulary, tokenize
from captioner.generation.decoding import CaptionGenerator
from captioner.models.networks import CaptionModel

BASELINES = ("greedy", "mean")


@keras.saving.register_keras_serializable(package="captioner")
class BannedCrossentropy(keras.losses.Loss):
    """Sparse cross-entropy over the words the sampler may draw: the banned ids' logits get -1e9 first.

    The policy gradient must be that of the distribution the captions were sampled from. The sampler never draws
    `<pad>`, `<start>` or `<unk>`; with their logits left in, the gradient of every token's log-probability also
    pushes those never-sampled logits by advantage x probability, a push with a sign (the mean advantage's) that no
    sample ever corrects. With the greedy baseline, whose advantages are mostly negative, it raised `<unk>` at every
    step and wrecked the captions within an epoch (BENCHMARKS.md, "Self-critical sequence training").

    Args:
        banned: token ids never sampled.
        vocab_size: int.
    """

    def __init__(
        self,
        banned: Sequence[int] = (),
        vocab_size: int = 1,
        reduction: str = "sum",
        name: str = "banned_crossentropy",
        **kwargs,
    ):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.banned, self.vocab_size = [int(i) for i in banned], int(vocab_size)
        mask = np.zeros(self.vocab_size, np.float32)
        mask[self.banned] = -1e9
        self._mask = mask

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32") + ops.convert_to_tensor(self._mask)  # (..., vocab)
        return ops.sparse_categorical_crossentropy(y_true, logits, from_logits=True)

    def get_config(self):
        return {**super().get_config(), "banned": self.banned, "vocab_size": self.vocab_size}


@dataclass
class CaptionSource:
    """The images of one split as a self-critical step reads them.

    inputs: indices -> the model's image input for those images: {"features": (n, positions, channels)} from a
        feature cache, or {"images": (n, size, size, 3) uint8}.
    references: per image, its reference captions as token ids (no `<start>`, no `<end>`).
    """

    inputs: Callable[[np.ndarray], dict[str, np.ndarray]]
    references: list[list[list[int]]]
    input_spec: tuple[str, tuple, str]  # (key, shape of one image's input, dtype)

    def __len__(self) -> int:
        return len(self.references)


def reference_ids(captions: Sequence[Sequence[str]], vocab: Vocabulary) -> list[list[list[int]]]:
    """Per image, its captions as token ids: a vocabulary word has its vocabulary id, any other word an id of its own
    above the vocabulary (never generated, but counted as the word it is, as pycocoevalcap counts it)."""
    index = {word: i for i, word in enumerate(vocab.words)}
    ids, _ = words_to_ids(([tokenize(caption) for caption in group] for group in captions), index)
    return ids


def _until_end(rows: np.ndarray, end_id: int, keep_end: bool) -> list[np.ndarray]:
    """Each row's tokens up to its `<end>` (kept or not); a row that never ends is kept whole."""
    out = []
    for row in rows:
        ends = np.flatnonzero(row == end_id)
        stop = int(ends[0]) + (1 if keep_end else 0) if len(ends) else len(row)
        out.append(row[:stop])
    return out


class SelfCritic:
    """Samples, rewards and advantages of self-critical training for one CaptionModel.

    Args:
        model: CaptionModel. Trained in place by the caller.
        vocab: Vocabulary.
        train: CaptionSource. The training images and references (the document frequencies come from them).
        samples: int. Captions sampled per image (>= 1; >= 2 with the "mean" baseline).
        baseline: "greedy" or "mean".
        max_length: int. Tokens generated at most, `<end>` included.
        seed: int. The sampling noise of step s of epoch e comes from (seed, e, s): a resumed epoch repeats its draws.
    """

    def __init__(
        self,
        model: CaptionModel,
        vocab: Vocabulary,
        train: CaptionSource,
        samples: int = 5,
        baseline: str = "greedy",
        max_length: int = 26,
        seed: int = 0,
    ):
        if baseline not in BASELINES:
            raise ValueError(f"unknown SCST baseline '{baseline}'; use greedy or mean")
        if samples < 1 or (baseline == "mean" and samples < 2):
            raise ValueError("SCST needs at least 1 sample per image (2 with the mean baseline)")
        self.model, self.vocab, self.train = model, vocab, train
        self.samples, self.baseline, self.max_length, self.seed = int(samples), baseline, int(max_length), int(seed)
        with_end = [[[*caption, vocab.end_id] for caption in group] for group in train.references]
        self.cider = CiderD(with_end)  # rewards: training references with <end>, document frequencies from them
        self._split_scorers: dict[int, CiderD] = {}  # greedy_cider's, per split scored (pycocoevalcap's CIDEr)
        self.sampler = CaptionGenerator(
            model,
            vocab,
            DecodeConfig(
                sampler="sampling",
                num_captions=self.samples,
                max_length=self.max_length,
                beam_size=1,
                length_penalty=0.0,
            ),
        )
        self.greedy = CaptionGenerator(
            model, vocab, DecodeConfig(sampler="greedy", beam_size=1, max_length=self.max_length)
        )
        key, shape, dtype = train.input_spec
        self.input_key = key
        noise_spec = ((None, self.samples, self.max_length), "float32")
        self._sample = backend.CompiledFunction(self._search, model.variables, [((None, *shape), dtype), noise_spec])
        self._decode = backend.CompiledFunction(self._greedy, model.variables, [((None, *shape), dtype)])

    def _encode(self, inputs):
        if self.input_key == "features":
            return self.model.encoder.from_cached(inputs)  # (batch, num_pixels, encoder_dim), (batch, pooled_dim)
        return self.model.encode(inputs)

    def _search(self, inputs, noise):
        grid, pooled = self._encode(inputs)
        *_, rows, _ = self.sampler.search_encoded(grid, pooled, noise)  # rows (batch, samples, max_length)
        if self.baseline != "greedy":
            return rows, rows[:, 0]
        greedy, *_ = self.greedy.search_encoded(grid, pooled)  # (batch, max_length)
        return rows, greedy

    def _greedy(self, inputs):
        grid, pooled = self._encode(inputs)
        tokens, *_ = self.greedy.search_encoded(grid, pooled)  # (batch, max_length)
        return (tokens,)

    def noise(self, batch: int, epoch: int, step: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, step]).random(
            (batch, self.samples, self.max_length), dtype=np.float32
        )

    def step_arrays(
        self, indices: np.ndarray, epoch: int, step: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, float]]:
        """For training images `indices`: (inputs, targets, sample_weight, stats) of one policy-gradient step.

        inputs: {input key, "tokens": (batch, samples, max_length) `<start>` + each sample}; targets: (batch, samples,
        max_length) each sample then padding; sample_weight: (batch, samples, max_length) the advantage on every token
        of a sample up to its `<end>`, over the tokens of the batch; stats: mean reward, baseline, sample length.
        """
        inputs = self.train.inputs(indices)
        image_input = inputs[self.input_key]
        rows, greedy = self._sample(
            image_input, self.noise(len(indices), epoch, step)
        )  # (batch, samples, L), (batch, L)
        batch = len(indices)
        flat = rows.reshape(batch * self.samples, self.max_length)
        images = np.repeat(indices, self.samples)
        scoring = time.perf_counter()
        samples = _until_end(flat, self.vocab.end_id, keep_end=True)  # each sample up to and with its <end>
        rewards = self.cider(samples, images).reshape(batch, self.samples)
        if self.baseline == "greedy":
            baseline = np.repeat(
                self.cider(_until_end(greedy, self.vocab.end_id, keep_end=True), indices)[:, None], self.samples, axis=1
            )
        else:  # the mean reward of the image's other samples
            baseline = (rewards.sum(axis=1, keepdims=True) - rewards) / (self.samples - 1)
        scoring = time.perf_counter() - scoring
        advantage = rewards - baseline  # (batch, samples)
        lengths = np.array([len(r) for r in samples]).reshape(batch, self.samples)
        mask = (
            np.arange(self.max_length)[None, None, :] < lengths[:, :, None]
        )  # (batch, samples, L): the sampled tokens
        weights = (advantage[:, :, None] * mask / max(int(mask.sum()), 1)).astype(np.float32)
        targets = np.where(mask, rows, self.vocab.pad_id).astype(np.int32)
        tokens = np.concatenate(
            [np.full((batch, self.samples, 1), self.vocab.start_id, np.int32), targets[:, :, :-1]], axis=2
        )
        stats = {
            "reward": float(rewards.mean()),
            "baseline": float(baseline.mean()),
            "sample_words": float((lengths - 1).mean()),
            "scoring_seconds": scoring,
        }
        return {self.input_key: image_input, "tokens": tokens}, targets, weights, stats

    def greedy_captions(self, source: CaptionSource, batch_size: int = 128) -> list[np.ndarray]:
        """Greedy token ids (up to, without, `<end>`) of every image of `source`."""
        out: list[np.ndarray] = []
        for start in range(0, len(source), batch_size):
            indices = np.arange(start, min(start + batch_size, len(source)))
            (tokens,) = self._decode(source.inputs(indices)[self.input_key])
            out.extend(_until_end(tokens, self.vocab.end_id, keep_end=False))
        return out

    def greedy_cider(self, source: CaptionSource, batch_size: int = 128) -> float:
        """pycocoevalcap's CIDEr (document frequencies from `source`'s references) of greedy captions of `source`."""
        captions = self.greedy_captions(source, batch_size)
        if id(source) not in self._split_scorers:  # its document frequencies: computed once per split, not per epoch
            self._split_scorers[id(source)] = CiderD(source.references)
        return float(self._split_scorers[id(source)](captions, np.arange(len(source))).mean())
