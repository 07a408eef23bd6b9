"""CIDEr-D (Vedantam et al. 2015) in numpy, vectorised over a batch of captions, with its document frequencies
computed once.

pycocoevalcap's `Cider` is CIDEr-D (tf-idf n-gram vectors for n = 1..4, the hypothesis clipped by the reference,
a Gaussian penalty on the length difference with sigma 6, times 10), but it takes its document frequencies from
the references it is given and loops over Python dicts per pair. Self-critical training scores a few hundred
sampled captions per step against the same training references all the time, so here the references are
"cooked" once: every n-gram becomes an integer key, the references of every image a sorted table of
(image, n-gram, reference, count). A batch is then a handful of numpy sorts and searches.

Given the same references as document corpus, `CiderD` equals pycocoevalcap's `Cider` score for score
(tests/test_cider.py), including its quirks: the length compared is the number of bigrams, and an n-gram no
reference holds weighs log(N).

Tokens are integer ids (a `Vocabulary`'s) below 2**15; `words_to_ids` maps strings to such ids for scoring text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

ORDERS = 4  # n-gram orders 1..4
BASE = 1 << 15  # one digit of an n-gram key: token id + 1 (so that n-grams of different n never share a key)
DENSE_BITS = 26  # dense n-gram ids below 2**26 (67M distinct n-grams); the image index takes the bits above


def _keys(tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every n-gram (n = 1..4) of a padded batch as (row, key, n - 1), keys int64 unique per n-gram."""
    rows, width = tokens.shape
    digits = tokens.astype(np.int64) + 1  # (rows, width)
    out_rows, out_keys, out_orders = [], [], []
    key = np.zeros((rows, width), np.int64)
    for n in range(1, ORDERS + 1):
        if width < n:
            break
        # (rows, width - n + 1): the n-gram starting at each position
        key = key[:, : width - n + 1] * BASE + digits[:, n - 1 :]
        valid = np.arange(width - n + 1)[None, :] + n <= lengths[:, None]  # (rows, width - n + 1)
        row_index, _ = np.nonzero(valid)
        out_rows.append(row_index)
        out_keys.append(key[valid])
        out_orders.append(np.full(len(row_index), n - 1, np.int64))
    return np.concatenate(out_rows), np.concatenate(out_keys), np.concatenate(out_orders)


def _counted(
    group: np.ndarray, keys: np.ndarray, orders: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(group, key, order, count) of every distinct (group, key) pair."""
    order = np.lexsort((keys, group))
    group, keys, orders = group[order], keys[order], orders[order]
    starts = (
        np.flatnonzero(np.r_[True, (group[1:] != group[:-1]) | (keys[1:] != keys[:-1])])
        if len(keys)
        else np.zeros(0, np.int64)
    )
    counts = np.diff(np.r_[starts, len(keys)])
    return group[starts], keys[starts], orders[starts], counts.astype(np.float64)


def _padded(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in sequences], np.int64)
    tokens = np.zeros((len(sequences), max(int(lengths.max(initial=0)), 1)), np.int64)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence)] = sequence
    if tokens.size and (tokens.min() < 0 or tokens.max() >= BASE - 1):
        raise ValueError(f"CIDEr-D token ids must be in [0, {BASE - 1})")
    return tokens, lengths


class CiderD:
    """CIDEr-D of captions against the references of their images.

    Args:
        references: per image, its reference token-id sequences.
        document_references: the corpus the document frequencies come from (per image, its references).
            Defaults to `references` (what pycocoevalcap does); self-critical training passes the training
            references, and scores samples of those same images.
        sigma: float. Width of the length penalty. Defaults to 6.0.
    """

    def __init__(
        self,
        references: Sequence[Sequence[Sequence[int]]],
        document_references: Sequence[Sequence[Sequence[int]]] | None = None,
        sigma: float = 6.0,
    ):
        self.sigma = float(sigma)
        corpus = references if document_references is None else document_references
        # Document frequency: in how many images' reference sets an n-gram occurs.
        flat, image_of = self._flatten(corpus)
        rows, keys, _ = _keys(*_padded(flat))
        pairs = np.unique(np.stack([image_of[rows], keys]), axis=1) if len(keys) else np.zeros((2, 0), np.int64)
        self.known, self.document_frequency = np.unique(pairs[1], return_counts=True)  # sorted n-gram keys, their df
        self.log_documents = float(np.log(float(len(corpus))))
        self._cook_references(references)

    @staticmethod
    def _flatten(groups: Sequence[Sequence[Sequence[int]]]) -> tuple[list[Sequence[int]], np.ndarray]:
        flat = [sequence for group in groups for sequence in group]
        image_of = np.repeat(np.arange(len(groups)), [len(group) for group in groups])
        return flat, image_of

    def _weights(self, keys: np.ndarray) -> np.ndarray:
        """The idf weight log(N) - log(max(1, df)) of each n-gram key (df 0 for an n-gram the corpus lacks)."""
        where = np.minimum(np.searchsorted(self.known, keys), max(len(self.known) - 1, 0))
        found = self.known[where] == keys if len(self.known) else np.zeros(len(keys), bool)
        df = np.where(found, self.document_frequency[where] if len(self.known) else 0, 0)
        return self.log_documents - np.log(np.maximum(df, 1.0))

    def _cook_references(self, references: Sequence[Sequence[Sequence[int]]]) -> None:
        self.num_images = len(references)
        self.refs_per_image = np.array([len(group) for group in references], np.int64)  # (images,)
        self.max_refs = int(self.refs_per_image.max(initial=1))
        flat, image_of = self._flatten(references)
        slot_of = np.concatenate([np.arange(len(group)) for group in references]) if flat else np.zeros(0, np.int64)
        tokens, lengths = _padded(flat)
        rows, keys, orders = _keys(tokens, lengths)
        ref_rows, keys, orders, counts = _counted(rows, keys, orders)
        values = counts * self._weights(keys)  # tf-idf of each (reference, n-gram)
        norms = np.zeros((self.num_images, self.max_refs, ORDERS))  # (images, refs, orders)
        np.add.at(norms, (image_of[ref_rows], slot_of[ref_rows], orders), values**2)
        self.ref_norms = np.sqrt(norms)
        # bigrams per reference (pycocoevalcap's "length")
        self.ref_lengths = np.zeros((self.num_images, self.max_refs))
        self.ref_lengths[image_of, slot_of] = np.maximum(lengths - 1, 0)
        # Sorted by (image, dense n-gram id), so one search finds an n-gram among all references of an image.
        # every n-gram key a reference or the corpus holds
        self.vocabulary = np.unique(np.concatenate([self.known, keys]))
        combined = image_of[ref_rows] << DENSE_BITS | np.searchsorted(self.vocabulary, keys)
        order = np.argsort(combined, kind="stable")
        self.ref_combined, self.ref_slot, self.ref_count = combined[order], slot_of[ref_rows][order], counts[order]
        if len(self.vocabulary) >= 1 << DENSE_BITS:
            raise ValueError(f"{len(self.vocabulary)} distinct n-grams: more than CIDEr-D's table holds")

    def __call__(self, hypotheses: Sequence[Sequence[int]], images: Sequence[int] | np.ndarray) -> np.ndarray:
        """CIDEr-D of each hypothesis (token ids) against the references of image `images[i]`: (hypotheses,) float64."""
        images = np.asarray(images, np.int64)
        if len(images) != len(hypotheses):
            raise ValueError(f"{len(hypotheses)} hypotheses for {len(images)} image indices")
        if len(images) and (images.min() < 0 or images.max() >= self.num_images):
            raise ValueError(f"image indices must be in [0, {self.num_images})")
        tokens, lengths = _padded(hypotheses)
        rows, keys, orders, counts = _counted(*_keys(tokens, lengths))
        weights = self._weights(keys)
        norms = np.zeros((len(images), ORDERS))  # (hypotheses, orders)
        np.add.at(norms, (rows, orders), (counts * weights) ** 2)
        norms = np.sqrt(norms)
        # Match each hypothesis n-gram with the same n-gram in every reference of its image.
        dense = np.minimum(np.searchsorted(self.vocabulary, keys), max(len(self.vocabulary) - 1, 0))
        known = self.vocabulary[dense] == keys if len(self.vocabulary) else np.zeros(len(keys), bool)
        combined = images[rows] << DENSE_BITS | dense
        low = np.searchsorted(self.ref_combined, combined, "left")
        high = np.where(known, np.searchsorted(self.ref_combined, combined, "right"), low)
        matches = high - low  # (entries,) references of the image holding the n-gram
        entry = np.repeat(np.arange(len(keys)), matches)
        position = np.repeat(low - np.cumsum(matches) + matches, matches) + np.arange(int(matches.sum()))
        ref_count = self.ref_count[position]
        # min(tf_h * w, tf_r * w) * tf_r * w: the hypothesis clipped by the reference, as pycocoevalcap
        overlap = np.minimum(counts[entry], ref_count) * ref_count * weights[entry] ** 2
        dots = np.zeros((len(images), self.max_refs, ORDERS))  # (hypotheses, refs, orders)
        np.add.at(dots, (rows[entry], self.ref_slot[position], orders[entry]), overlap)
        ref_norms = self.ref_norms[images]  # (hypotheses, refs, orders)
        both = (norms[:, None, :] != 0) & (ref_norms != 0)
        similarity = np.where(both, dots / np.where(both, norms[:, None, :] * ref_norms, 1.0), dots)
        delta = np.maximum(lengths - 1, 0)[:, None] - self.ref_lengths[images]  # (hypotheses, refs)
        similarity = similarity * np.exp(-(delta**2) / (2 * self.sigma**2))[:, :, None]
        present = np.arange(self.max_refs)[None, :] < self.refs_per_image[images][:, None]  # (hypotheses, refs)
        total = (similarity.mean(axis=2) * present).sum(axis=1)  # (hypotheses,)
        return total / np.maximum(self.refs_per_image[images], 1) * 10.0


def words_to_ids(
    groups: Iterable[Iterable[Sequence[str]]], index: dict[str, int] | None = None
) -> tuple[list[list[list[int]]], dict[str, int]]:
    """Token-id sequences for nested groups of word lists, and the word -> id index used (extended as words appear)."""
    index = {} if index is None else index
    out = [[[index.setdefault(word, len(index)) for word in words] for words in group] for group in groups]
    return out, index
