"""Numeric precision of a run: float32, or mixed precision (bfloat16/float16 compute, float32 variables).

Keras takes a layer's dtype policy when the layer is created, from the global policy unless one is passed;
captioner's layers create their sub-layers themselves, so a model is built (and loaded) inside
`precision_scope`, which sets the policy for the duration and puts the previous one back. Variables stay
float32 under every policy, so a model saved under one precision loads under any other; the loss, the
softmax of generation and beam scores stay float32.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import keras

from captioner.backend import gpu_compute_capabilities
from captioner.config import PRECISIONS


def fast_bfloat16() -> bool:
    """Whether this machine multiplies bfloat16 matrices much faster than float32: an x86 CPU with AMX or
    AVX512-BF16, or a GPU of compute capability 8.0 or newer (Ampere on)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        flags = ""
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        return True
    return any(capability >= (8, 0) for capability in gpu_compute_capabilities())


def resolve_precision(name: str) -> str:
    """A concrete precision for "auto" (mixed_bfloat16 where bfloat16 is fast, else float32); others as given."""
    if name == "auto":
        return "mixed_bfloat16" if fast_bfloat16() else "float32"
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision '{name}'; choose auto or one of: {', '.join(PRECISIONS)}")
    return name


def lstm_use_cudnn(compute_dtype: str) -> str | bool:
    """`use_cudnn` for a keras.layers.LSTM computing in `compute_dtype`: "auto" (cuDNN where Keras can) for
    float32, False otherwise. Under JAX on a GPU, Keras's cuDNN LSTM (jax.experimental.rnn) fails to compile
    for bfloat16 ("ValueError: Unknown output type bfloat16"; Keras 3.15.1, jax 0.11.2, an H200, 2026-11-26),
    and it fails after Keras's own fall-back check, so "auto" does not catch it; the generic loop works."""
    return "auto" if compute_dtype == "float32" else False


@contextlib.contextmanager
def precision_scope(name: str) -> Iterator[None]:
    """Layers created inside use `name` ("auto" resolved); the previous global policy is restored after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(resolve_precision(name))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
