"""`FeatureCache`: the grid features of a frozen encoder, computed once per image and kept on disk.

With a frozen (ImageNet) CNN, running it once per image per epoch is most of the cost of training on a
CPU. The cache runs it once per image, in batches, and stores the grid (batch, num_pixels, encoder_dim) as
float16 `.npy` shards that training reads memory-mapped.

Keys: a cache folder per encoder *identity* (its config and a SHA-256 of its weights, so a different
backbone, input size or weights file never shares a folder), and inside it one row per image *content*
(SHA-256 of the file's bytes, so an edited or replaced image is computed again, whatever its name).
Shards are written atomically and the index after them: a kill leaves at most an unused shard.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np

from captioner.backend import CompiledFunction
from captioner.data.images import try_load_image
from captioner.errors import CaptionerError
from captioner.fileio import atomic_path, file_sha256, update_lock, write_json
from captioner.models.encoder import ImageEncoder

INDEX_FILE = "index.json"


def encoder_digest(encoder: ImageEncoder) -> str:
    """SHA-256 of what decides the grid: the CNN's name, its input size and every one of its weights (the
    pooling and projection come after the grid and are not part of it)."""
    identity = {"encoder": encoder.encoder, "image_size": encoder.image_size}
    if encoder.cnn.compute_dtype != "float32":  # reduced-precision features are other features (float32 keys unchanged)
        identity["compute_dtype"] = encoder.cnn.compute_dtype
    if encoder.cut is not None:  # activations below the fine-tuned blocks: only the frozen part decides them
        identity["below"] = encoder.cut
    digest = hashlib.sha256(json.dumps(identity).encode())
    for weight in encoder.frozen_cnn.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Grid features of one frozen encoder for any number of images.

    Args:
        root: path. Folder holding one sub-folder per encoder identity.
        encoder: ImageEncoder. Used to compute what is missing.
        dtype: str. Storage type, "float16" (half the disk and memory) or "float32". Defaults to "float16".
    """

    def __init__(self, root: str | Path, encoder: ImageEncoder, dtype: str = "float16"):
        self.encoder = encoder
        self.dtype = np.dtype(dtype)
        self.key = encoder_digest(encoder)
        self.folder = Path(root) / f"{encoder.encoder}-{encoder.image_size}px-{self.key[:16]}"
        self.shape = encoder.cached_shape  # (num_pixels, encoder_dim), or the activations below fine-tuned blocks
        self._index = self._read_index()
        self._shards: dict[str, np.ndarray] = {}

    def _read_index(self) -> dict:
        path = self.folder / INDEX_FILE
        if not path.exists():
            return {
                "encoder": self.encoder.encoder,
                "image_size": self.encoder.image_size,
                "key": self.key,
                "shape": list(self.shape),
                "dtype": self.dtype.name,
                "rows": {},
            }
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            if index["key"] != self.key or tuple(index["shape"]) != self.shape or index["dtype"] != self.dtype.name:
                raise ValueError("written for another encoder")
            return index
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise CaptionerError(
                f"feature cache {path} is damaged or foreign ({exc}); delete {self.folder} to rebuild it"
            ) from None

    def digests(self, paths: Sequence[str]) -> list[str | None]:
        """The content digest of every file; None for a file that cannot be read (gone, no permission)."""

        def digest(path: str) -> str | None:
            try:
                return file_sha256(path)
            except OSError:
                return None

        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(digest, paths))

    def missing(self, paths: Sequence[str], digests: Sequence[str] | None = None) -> list[str]:
        """The paths whose content has no cached row."""
        digests = digests or self.digests(paths)
        rows = self._index["rows"]
        return list(dict.fromkeys(p for p, d in zip(paths, digests) if d not in rows))

    def extract(
        self,
        paths: Sequence[str],
        batch_size: int = 32,
        verbose: int = 1,
        on_error: Callable[[str, str], None] | None = None,
        shard_images: int = 1024,
    ) -> int:
        """Compute and store the features of `paths` not cached yet; returns how many were computed.

        An unreadable image is reported through `on_error(path, message)` (or raises) and gets no row.
        Rows are stored in shards of `shard_images` as they are computed, so memory stays at one shard
        (128 MB for a 7x7x1280 grid) whatever the dataset size, and a kill loses at most one shard's work.
        """
        paths = list(paths)
        digests = self.digests(paths)
        todo = [(p, d) for p, d in dict(zip(paths, digests)).items() if d not in self._index["rows"]]
        for path, _ in [
            item for item in todo if item[1] is None
        ]:  # cannot even be read: no row, reported like a bad decode
            message = try_load_image(path, self.encoder.image_size)[1] or f"{path}: cannot read"
            if on_error is None:
                raise CaptionerError(message)
            on_error(path, message)
        todo = [item for item in todo if item[1] is not None]
        if not todo:
            return 0
        size = self.encoder.image_size
        # 2: one line at the end
        progress = keras.utils.Progbar(len(todo), unit_name="image", verbose=int(verbose)) if verbose else None
        rows: list[np.ndarray] = []  # computed, not stored yet
        names: list[str] = []  # digests of every computed row
        computed = 0  # rows already stored

        def read(item):
            return (item, *try_load_image(item[0], size))

        # Compiled once for every batch size (a tf.function, or jax.jit): 1.2x the images/s of calling the Keras
        # model eagerly batch by batch, and 2.3 GB less memory (BENCHMARKS.md, "Feature extraction").
        encode = CompiledFunction(
            lambda images: (self.encoder.cache_features(images),),
            self.encoder.variables,
            [((None, size, size, 3), "uint8")],
        )

        with ThreadPoolExecutor(max_workers=2) as pool:
            pending = pool.map(read, todo[:batch_size])  # submitted now: the next batch decodes while this one computes
            for start in range(0, len(todo), batch_size):
                batch = list(pending)
                pending = pool.map(read, todo[start + batch_size : start + 2 * batch_size])
                good = [(item, image) for item, image, error in batch if error is None]
                for item, _, error in batch:
                    if error is not None:
                        if on_error is None:
                            raise CaptionerError(error)
                        on_error(item[0], error)
                if good:
                    (grid,) = encode(np.stack([image for _, image in good]))  # (batch, num_pixels, encoder_dim)
                    rows.append(grid.astype(self.dtype))
                    names += [digest for (_, digest), _ in good]
                if len(names) - computed >= shard_images:
                    self.store(names[computed:], np.concatenate(rows))
                    computed, rows = len(names), []
                if progress is not None:
                    progress.add(len(batch))
        if rows:
            self.store(names[computed:], np.concatenate(rows))
        return len(names)

    def store(self, digests: Sequence[str], features: np.ndarray) -> None:
        """Add one shard: `features` (len(digests), num_pixels, encoder_dim) for the image contents `digests`."""
        if features.shape != (len(digests), *self.shape):
            raise ValueError(f"features of shape {features.shape} for {len(digests)} images of grid {self.shape}")
        shard = f"shard-{uuid.uuid4().hex[:12]}.npy"
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / shard) as tmp:  # the shard first, then the index that points at it
            np.save(tmp, features.astype(self.dtype, copy=False))  # (images, num_pixels, encoder_dim)
        # Read-modify-write under a lock, from the index on disk: another process filling the same cache (a second
        # `features` worker, a training) may have added rows since this one read it, and they are kept.
        with update_lock(self.folder / INDEX_FILE):
            current = self._read_index()
            index = {
                **current,
                "rows": {**current["rows"], **{digest: [shard, row] for row, digest in enumerate(digests)}},
            }
            try:
                write_json(self.folder / INDEX_FILE, index)
            except BaseException:  # the index on disk is the old one: the new shard is unreferenced, remove it
                (self.folder / shard).unlink(missing_ok=True)
                raise
        self._index = index

    def rows(self, paths: Sequence[str], digests: Sequence[str] | None = None) -> CachedRows:
        """The features of `paths` as an array-like read on demand from the memory-mapped shards (what training
        indexes batch by batch): memory stays at the batches read, whatever the number of images."""
        digests = digests or self.digests(paths)
        rows = self._index["rows"]
        locations = []
        for path, digest in zip(paths, digests):
            if digest is None:
                raise CaptionerError(f"{path}: cannot read (deleted or no permission)")
            if digest not in rows:
                raise CaptionerError(f"no cached features for {path}; run `captioner features` first")
            shard, row = rows[digest]
            if shard not in self._shards:
                # (shard_images, num_pixels, encoder_dim)
                self._shards[shard] = np.load(self.folder / shard, mmap_mode="r")
            locations.append((shard, row))
        return CachedRows(self._shards, locations, self.shape, self.dtype)

    def load(self, paths: Sequence[str], digests: Sequence[str] | None = None) -> np.ndarray:
        """Features of `paths` in order, in memory: (len(paths), num_pixels, encoder_dim), in the storage dtype."""
        return self.rows(paths, digests)[np.arange(len(paths))]


class CachedRows:
    """Cached features of a list of images, indexed like an array of shape (images, num_pixels, encoder_dim):
    `rows[indices]` gathers those images' grids from the shards (memory maps), in the order asked."""

    def __init__(
        self,
        shards: dict[str, np.ndarray],
        locations: Sequence[tuple[str, int]],
        grid: tuple[int, int],
        dtype: np.dtype,
    ):
        self.shards = shards
        self.shard_of = np.array([shard for shard, _ in locations], dtype=object)
        self.row_of = np.array([row for _, row in locations], dtype=np.int64)
        self.shape = (len(locations), *grid)
        self.dtype = dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, indices) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(indices), *self.shape[1:]), self.dtype)  # (len(indices), num_pixels, encoder_dim)
        shards = self.shard_of[indices]
        for shard in dict.fromkeys(shards):
            picked = np.flatnonzero(shards == shard)
            order = np.argsort(self.row_of[indices[picked]], kind="stable")  # ascending rows: sequential reads
            out[picked[order]] = self.shards[shard][self.row_of[indices[picked[order]]]]
        return out
