"""Shared fixtures: a tiny `shapes` dataset and one tiny trained run, built once per session."""

from __future__ import annotations

import contextlib
import os
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import keras
import pytest

from captioner.config import apply_overrides, preset
from captioner.data.shapes import ShapesSpec, generate

SHARED = Path(__file__).resolve().parents[2] / "shared"


def pytest_report_header(config) -> str:
    """Say whether ../shared is there: without it the tests on real photos and weights skip, and a suite timed in a
    clone outside the project's folder (say /tmp) measures less than CI runs."""
    return f"../shared: {'present' if SHARED.is_dir() else 'ABSENT (its tests skip)'} ({SHARED})"


# Memorisation (quality) is asserted on TensorFlow, where the fixtures train to the end. The second, JAX,
# session of `make test` runs only tests of behaviour (same tokens after a reload, across backends, CLI
# output), so its fixtures train briefly: the suite stays under 10 minutes with both sessions.
FULL = keras.backend.backend() == "tensorflow"


@pytest.fixture(scope="session", autouse=True)
def weights_cache(tmp_path_factory):
    """Converted backbone weights (EfficientNet-Lite) go to one temporary folder per session, never to ~/.cache."""
    folder = tmp_path_factory.mktemp("captioner-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAPTIONER_CACHE_DIR", str(folder))
        yield folder / "weights"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """32 train / 16 val / 16 test images of 32x32 with at most two objects."""
    out = tmp_path_factory.mktemp("shapes")
    generate(out, ShapesSpec(image_size=32, num_train=32, num_val=16, num_test=16, seed=1, max_objects=2), workers=1)
    return out


def tiny_config(data_dir: Path, **overrides: str):
    config = preset("tiny")
    apply_overrides(config, {"data.data_dir": str(data_dir), **overrides})
    return config


@pytest.fixture(scope="session")
def overfit_run(tiny_data, tmp_path_factory) -> Path:
    """A tiny model trained to memorise the 32 training images (validated on the same images)."""
    from captioner.train import train

    config = tiny_config(
        tiny_data,
        **{
            "train.epochs": "150" if FULL else "30",
            "train.val_split": "train",
            "train.patience": "150",
            "train.learning_rate": "0.003",
            "train.batch_size": "8",
            "model.hidden_dim": "64",
            "model.feature_dim": "64",
        },
    )
    run_dir = tmp_path_factory.mktemp("runs") / "overfit"
    train(config, run_dir, verbose=0)
    return run_dir


@pytest.fixture(scope="session")
def attention_run(tiny_data, tmp_path_factory) -> Path:
    """A tiny Show-Attend-Tell run (briefly trained; for the CLI paths, not for quality)."""
    from captioner.train import train

    config = tiny_config(tiny_data, **{"model.decoder": "attention", "model.attention_dim": "16", "train.epochs": "2"})
    run_dir = tmp_path_factory.mktemp("runs") / "attention"
    train(config, run_dir, verbose=0)
    return run_dir


@pytest.fixture(scope="session")
def vqa_run(tiny_data, tmp_path_factory) -> Path:
    """A tiny VQA model trained to memorise the questions about the 32 training images."""
    from captioner.train import train

    config = tiny_config(
        tiny_data,
        **{
            "train.epochs": "80" if FULL else "25",
            "train.val_split": "train",
            "train.patience": "80",
            "train.learning_rate": "0.005",
            "train.batch_size": "8",
            "vqa.question_hidden_dim": "64",
            "vqa.fusion_dim": "64",
            "vqa.mlp_dim": "64",
        },
    )
    config.task = "vqa"
    run_dir = tmp_path_factory.mktemp("runs") / "vqa"
    train(config, run_dir, verbose=0)
    return run_dir


@contextlib.contextmanager
def serving(service):
    """A real uvicorn server of `service` on a free 127.0.0.1 port, in a background thread: yields its base URL."""
    import uvicorn

    from captioner.serving.serve import create_app, listening_socket

    sock = listening_socket("127.0.0.1", 0)  # a free port, held from now on: no other process can take it first
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(400):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
