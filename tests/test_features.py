"""FeatureCache: computed once per image content and encoder identity; training on cached features."""

import json

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from captioner.errors import CaptionerError
from captioner.models.encoder import ImageEncoder
from captioner.models.features import FeatureCache
from captioner.tasks.base import cache_encoder
from captioner.train import train


@pytest.fixture(scope="module")
def backbone():
    import keras

    keras.utils.set_random_seed(0)
    return ImageEncoder("mobilenet_v2", image_size=32, weights=None, encoder_trainable=False)


def _images(folder, count, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_features_are_computed_once_and_match_the_encoder(backbone, tmp_path):
    paths = _images(tmp_path / "images", 5)
    cache = FeatureCache(tmp_path / "cache", backbone)
    assert cache.extract(paths, batch_size=2, verbose=False) == 5
    assert cache.extract(paths, verbose=False) == 0
    again = FeatureCache(tmp_path / "cache", backbone)  # a new process: the index on disk is enough
    assert again.missing(paths) == []
    features = again.load(paths)
    assert features.shape == (5, backbone.num_pixels, backbone.encoder_dim) and features.dtype == np.float16
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    grid, _ = backbone(images, training=False)
    np.testing.assert_allclose(features.astype(np.float32), np.asarray(grid), rtol=2e-3, atol=2e-3)


def test_a_changed_image_or_encoder_is_never_served_stale_features(backbone, tmp_path):
    import keras

    paths = _images(tmp_path / "images", 3)
    cache = FeatureCache(tmp_path / "cache", backbone)
    cache.extract(paths, verbose=False)
    Image.new("RGB", (32, 32), "red").save(paths[1])  # same name, new content
    assert cache.missing(paths) == [paths[1]]
    keras.utils.set_random_seed(1)
    other = ImageEncoder("mobilenet_v2", image_size=32, weights=None, encoder_trainable=False)  # other weights
    other_cache = FeatureCache(tmp_path / "cache", other)
    assert other_cache.folder != cache.folder and len(other_cache.missing(paths)) == 3
    bigger = ImageEncoder("mobilenet_v2", image_size=64, weights=None, encoder_trainable=False)
    assert FeatureCache(tmp_path / "cache", bigger).folder != cache.folder


def test_unreadable_images_are_reported_and_the_rest_cached(backbone, tmp_path):
    paths = _images(tmp_path / "images", 2)
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"not an image")
    errors = []
    cache = FeatureCache(tmp_path / "cache", backbone)
    assert cache.extract([paths[0], str(broken), paths[1]], verbose=False, on_error=lambda p, m: errors.append(p)) == 2
    assert errors == [str(broken)]
    with pytest.raises(CaptionerError, match="no cached features"):
        cache.load([str(broken)])


def test_a_damaged_index_says_how_to_rebuild(backbone, tmp_path):
    paths = _images(tmp_path / "images", 1)
    cache = FeatureCache(tmp_path / "cache", backbone)
    cache.extract(paths, verbose=False)
    (cache.folder / "index.json").write_text("{broken")
    with pytest.raises(CaptionerError, match="delete"):
        FeatureCache(tmp_path / "cache", backbone)


@pytest.mark.slow  # test_cli.py::test_features_command_fills_the_cache_train_reads covers the path by default
def test_training_with_a_frozen_backbone_reads_cached_features(tiny_data, tmp_path):
    from captioner.run import load_run

    config = tiny_config(
        tiny_data,
        **{
            "model.encoder": "mobilenet_v2",
            "model.encoder_weights": "none",
            "train.epochs": "1",
            "data.feature_cache_dir": str(tmp_path / "cache"),
        },
    )
    first = train(config, tmp_path / "run", verbose=0)["train"]
    assert first["features_computed"] == 48 and "feature_cache" in first  # 32 train + 16 val images
    second = train(config, tmp_path / "run2", verbose=0)["train"]
    assert second["features_computed"] == 0
    # The saved model is whole: it reads pixels, and pixels give what the cached features gave.
    run = load_run(tmp_path / "run")
    assert not run.model.encoder.encoder_trainable
    records = json.loads((tiny_data / "val.json").read_text())["records"][:4]
    paths = [str(tiny_data / r["image"]) for r in records]
    from captioner.data.images import load_image

    images = np.stack([load_image(p, run.model.encoder.image_size) for p in paths])
    tokens = np.ones((4, 1, 3), np.int32)
    cache = FeatureCache(tmp_path / "cache", cache_encoder(run.model.encoder, run.config))  # the CNN training read with
    from_pixels = np.asarray(run.model({"images": images, "tokens": tokens}))
    from_cache = np.asarray(run.model({"features": cache.load(paths), "tokens": tokens}))
    # Features computed in bfloat16 (data.feature_precision, e.g. CAPTIONER_AUTO_PRECISION=mixed_bfloat16) differ
    # from the float32 CNN's by bfloat16's rounding through MobileNetV2's 50-odd layers.
    tolerance = 1e-2 if run.config.data.feature_precision == "float32" else 1e-1
    np.testing.assert_allclose(from_pixels, from_cache, rtol=tolerance, atol=tolerance)


def test_large_extractions_are_stored_shard_by_shard(backbone, tmp_path, monkeypatch):
    """Rows go to disk every `shard_images` images, so a kill part-way keeps what was stored (memory stays at
    one shard): here the third shard's write fails, and the first two shards' images stay cached."""
    paths = _images(tmp_path / "images", 7)
    cache = FeatureCache(tmp_path / "cache", backbone)
    stored = []
    original = cache.store

    def store_twice_then_fail(digests, features):
        if len(stored) == 2:
            raise KeyboardInterrupt
        stored.append(len(digests))
        original(digests, features)

    monkeypatch.setattr(cache, "store", store_twice_then_fail)
    with pytest.raises(KeyboardInterrupt):
        cache.extract(paths, batch_size=1, verbose=False, shard_images=3)
    assert stored == [3, 3]
    again = FeatureCache(tmp_path / "cache", backbone)
    assert again.missing(paths) == paths[6:]
    assert again.extract(paths, verbose=False) == 1
    assert len(list((tmp_path / "cache").glob("*/shard-*.npy"))) == 3


def test_a_full_disk_while_writing_a_shard_leaves_the_index_consistent(backbone, tmp_path, monkeypatch):
    """ENOSPC injected into the second shard's write (after half a file): a one-line error, no temporary left,
    the index lists the first shard only, and the next extraction computes just the rest."""
    import errno
    from pathlib import Path

    paths = _images(tmp_path / "images", 6)
    cache = FeatureCache(tmp_path / "cache", backbone)
    real_save, calls = np.save, []

    def second_shard_fails(file, array, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:
            Path(file).write_bytes(b"\x93NUMPY half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(file, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", second_shard_fails)
    with pytest.raises(
        CaptionerError, match="^no space left on device while saving .*shard-.*npy; the previous version is kept"
    ):
        cache.extract(paths, batch_size=2, verbose=False, shard_images=2)
    monkeypatch.setattr(np, "save", real_save)
    assert [p.name for p in cache.folder.iterdir() if p.name.startswith(".")] == []  # no temporary left
    assert len(list(cache.folder.glob("shard-*.npy"))) == 1
    reopened = FeatureCache(tmp_path / "cache", backbone)
    assert reopened.missing(paths) == paths[2:]  # the first shard is indexed, the failed one is not
    assert reopened.extract(paths, batch_size=2, verbose=False, shard_images=2) == 4
    fresh = FeatureCache(tmp_path / "fresh", backbone)
    fresh.extract(paths, batch_size=6, verbose=False)
    np.testing.assert_array_equal(reopened.load(paths), fresh.load(paths))


def test_rows_gather_from_several_shards_in_any_order_without_loading_them(backbone, tmp_path):
    paths = _images(tmp_path / "images", 7)
    cache = FeatureCache(tmp_path / "cache", backbone)
    cache.extract(paths, batch_size=2, verbose=False, shard_images=3)  # shards of 4, 3 (a batch overshoots) rows
    assert len(list(cache.folder.glob("shard-*.npy"))) == 2
    rows = cache.rows(paths[::-1])  # records in another order than the shards
    assert rows.shape == (7, backbone.num_pixels, backbone.encoder_dim) and rows.dtype == np.float16
    assert all(isinstance(shard, np.memmap) for shard in rows.shards.values())  # read per batch, never all at once
    in_memory = cache.load(paths[::-1])
    indices = np.array([6, 0, 3, 3, 5, 1])  # shuffled, across both shards, one repeated
    np.testing.assert_array_equal(rows[indices], in_memory[indices])
    np.testing.assert_array_equal(rows[np.arange(7)], in_memory)


def test_two_workers_filling_one_cache_keep_each_others_rows(backbone, tmp_path):
    """Two `features` processes on one cache: each read the index before the other wrote. The index is read again
    under a lock before each write, so neither loses the other's rows (before: the last writer's index won)."""
    first_paths, second_paths = _images(tmp_path / "a", 3, seed=1), _images(tmp_path / "b", 2, seed=2)
    first, second = (
        FeatureCache(tmp_path / "cache", backbone),
        FeatureCache(tmp_path / "cache", backbone),
    )  # both see an empty cache
    assert first.extract(first_paths) == 3 and second.extract(second_paths) == 2
    again = FeatureCache(tmp_path / "cache", backbone)
    assert again.missing(first_paths + second_paths) == []
    np.testing.assert_array_equal(again.rows(first_paths)[np.arange(3)], first.rows(first_paths)[np.arange(3)])
    assert (tmp_path / "cache" / again.folder.name / "index.json.lock").exists()  # the lock file stays beside the index


def test_metrics_updates_from_threads_at_once_are_all_kept(tmp_path):
    """`evaluate` beside `train`: concurrent read-modify-writes of metrics.json lose nothing."""
    from concurrent.futures import ThreadPoolExecutor

    from captioner.run import update_metrics

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: update_metrics(tmp_path, {f"entry{i}": i}), range(64)))
    assert json.loads((tmp_path / "metrics.json").read_text()) == {f"entry{i}": i for i in range(64)}
