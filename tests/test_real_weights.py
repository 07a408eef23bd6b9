"""The ImageNet MobileNetV2 weights in ../shared/weights on real Flickr8k photos (skipped when ../shared is absent)."""

import json

import numpy as np
import pytest
from conftest import SHARED

from captioner.cli import main
from captioner.data.images import load_image
from captioner.models.encoder import ImageEncoder, build_classifier, read_class_index
from captioner.models.features import FeatureCache

WEIGHTS = SHARED / "weights"
WITH_TOP = WEIGHTS / "mobilenet_v2_1.0_224_imagenet.weights.h5"
NO_TOP = WEIGHTS / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"
PHOTOS = SHARED / "datasets" / "flickr8k" / "Images"
pytestmark = pytest.mark.skipif(
    not (NO_TOP.is_file() and PHOTOS.is_dir()), reason="../shared/weights or the Flickr8k photos are absent"
)

# Checked by eye: a border collie catching a frisbee, a football player in a helmet, a pug, two children on a tyre
# swing.
EXPECTED = {
    "1067180831_a59dc64344.jpg": "Border_collie",
    "241347760_d44c8d3a01.jpg": "football_helmet",
    "1394368714_3bc7c19969.jpg": "pug",
    "3453259666_9ecaa8bb4b.jpg": "swing",
}


@pytest.fixture(scope="module")
def photos():
    return np.stack([load_image(PHOTOS / name, 224) for name in EXPECTED])  # (4, 224, 224, 3) uint8


def test_the_with_top_file_classifies_real_photos_sensibly(photos):
    model, preprocess, size = build_classifier("mobilenet_v2", str(WITH_TOP))
    names = read_class_index(WEIGHTS / "imagenet_class_index.json")
    probabilities = np.asarray(model(preprocess(photos.astype("float32")), training=False))  # (4, 1000)
    assert [names[i] for i in probabilities.argmax(-1)] == list(EXPECTED.values())
    assert probabilities.max(-1).min() > 0.5


def test_no_top_weights_in_the_encoder_give_the_features_the_classifier_reads(photos):
    """The project's encoder with the no-top file, followed by the with-top file's classifier layer, classifies as
    the whole network does: the weights loaded, in the right places."""
    encoder = ImageEncoder("mobilenet_v2", image_size=224, weights=str(NO_TOP), encoder_trainable=False)
    _, pooled = encoder(photos, training=False)  # (4, 1280)
    classifier, preprocess, _ = build_classifier("mobilenet_v2", str(WITH_TOP))
    dense = classifier.get_layer("predictions")
    np.testing.assert_allclose(
        np.asarray(dense(pooled)), np.asarray(classifier(preprocess(photos.astype("float32")))), atol=1e-4
    )
    random = ImageEncoder("mobilenet_v2", image_size=224, weights=None)
    assert not np.allclose(np.asarray(random(photos)[1]), np.asarray(pooled))


def test_fine_tuning_the_real_backbone_keeps_its_folded_batch_norms(photos):
    encoder = ImageEncoder("mobilenet_v2", image_size=224, weights=str(NO_TOP), encoder_trainable=True)
    inference, _ = encoder(photos[:2], training=False)
    training, _ = encoder(photos[:2], training=True)
    np.testing.assert_allclose(np.asarray(training), np.asarray(inference), atol=1e-5)


def test_the_feature_cache_of_the_real_backbone_is_reused(tmp_path):
    paths = [str(PHOTOS / name) for name in EXPECTED]
    encoder = ImageEncoder("mobilenet_v2", image_size=224, weights=str(NO_TOP), encoder_trainable=False)
    assert FeatureCache(tmp_path, encoder).extract(paths, verbose=False) == 4
    again = FeatureCache(
        tmp_path, ImageEncoder("mobilenet_v2", image_size=224, weights=str(NO_TOP), encoder_trainable=False)
    )
    assert again.folder.name.startswith("mobilenet_v2-224px-")
    assert again.extract(paths, verbose=False) == 0  # a second run computes nothing
    features = again.load(paths)  # (4, 49, 1280) float16
    grid, _ = encoder(np.stack([load_image(p, 224) for p in paths]), training=False)
    np.testing.assert_allclose(features.astype(np.float32), np.asarray(grid), rtol=1e-2, atol=1e-2)


def test_classify_command_names_the_classes(capsys):
    assert main(["classify", "--weights", str(WITH_TOP), "--json", *(str(PHOTOS / n) for n in EXPECTED)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["classes"][0]["name"] for r in results] == list(EXPECTED.values())


@pytest.mark.parametrize("problem", ["no top", "truncated", "another network"])
def test_a_weights_file_that_does_not_fit_is_one_line_and_exit_2(problem, tmp_path, capsys):
    import keras

    if problem == "no top":
        weights = NO_TOP
    elif problem == "truncated":
        weights = tmp_path / "truncated.weights.h5"
        weights.write_bytes(WITH_TOP.read_bytes()[:100_000])
    else:
        weights = tmp_path / "half.weights.h5"
        keras.applications.MobileNetV2(alpha=0.5, weights=None).save_weights(weights)
    assert main(["classify", "--weights", str(weights), str(PHOTOS / "1067180831_a59dc64344.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(weights) in err[0] and "expected keras.applications mobilenet_v2 weights" in err[0]
