"""Numeric precision of a run: float32, or mixed precision (bfloat16/float16 compute, float32 variables).

A model's precision is passed, not global: the builders and `load_run` give what they built or loaded to
`apply_precision`, which sets the dtype policy of every layer inside it (Keras's global policy is never touched).
Variables stay float32 under every policy, so a model saved under one precision loads under any other; the loss,
the softmax of generation and beam scores stay float32.

`auto` is chosen per kind of work and per kind of hardware from a table of measurements (`AUTO_RULES`,
BENCHMARKS.md "Green on every CPU"): mixed precision only where it measured faster than float32 on
that hardware *and* kept the quality; float32 everywhere else. `CAPTIONER_AUTO_PRECISION=float32` or
`=mixed_bfloat16` forces what `auto` becomes (to run the suite as if on another kind of machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import keras

from captioner.backend import gpu_compute_capabilities
from captioner.config import AUTO_PRECISION_ENV, PRECISIONS

AUTO_ENV = AUTO_PRECISION_ENV  # forces what "auto" becomes: float32 or mixed_bfloat16 (tests, other machines)
# What a precision is chosen for: training a CNN from pixels (the small CNN, a fine-tuned backbone), training a
# decoder or VQA head on cached backbone features, running a frozen backbone to fill the feature cache, and
# generating captions or answers.
WORKS = ("train_cnn", "train_cached", "features", "decode")
# Hardware kinds as `hardware()` names them.
HARDWARE = ("gpu_bf16", "cpu_amx", "cpu_avx512_bf16", "cpu")

# (hardware, work) -> (precision, why). Absent pairs are float32. Mixed precision is listed only where it was
# measured faster than float32 on that hardware and of equal quality (BENCHMARKS.md, "Green on every CPU").
AUTO_RULES: dict[tuple[str, str], tuple[str, str]] = {
    ("cpu_avx512_bf16", "train_cached"): (
        "mixed_bfloat16",
        "Flickr8k on cached features: BLEU-4 0.1687 vs 0.1702 in float32 after 2 epochs each, "
        "`captioner train` 1.64x faster (AMD EPYC, 2026-11-30)",
    ),
    ("gpu_bf16", "train_cached"): (
        "mixed_bfloat16",
        "Flickr8k decoder step 1.61x faster on an H200 (2026-11-26); BLEU-4 within 0.0015 of float32 "
        "(the CPU pair, 2026-11-30)",
    ),
}


@dataclass(frozen=True)
class Choice:
    """What `auto` became, and the one-line reason (config.json and the training log say it)."""

    precision: str
    reason: str


def hardware() -> str:
    """The kind of machine for precision purposes: a GPU of compute capability 8.0+ (Ampere on), an x86 CPU with
    AMX, one with AVX512-BF16, or any other CPU."""
    if any(capability >= (8, 0) for capability in gpu_compute_capabilities()):
        return "gpu_bf16"
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        flags = ""
    if "amx_bf16" in flags:
        return "cpu_amx"
    if "avx512_bf16" in flags:
        return "cpu_avx512_bf16"
    return "cpu"


def choose_auto(work: str, kind: str | None = None) -> Choice:
    """What "auto" becomes for `work` (one of WORKS) on this machine (or on hardware `kind`), and why."""
    if work not in WORKS:
        raise ValueError(f"unknown kind of work '{work}'; one of: {', '.join(WORKS)}")
    forced = os.environ.get(AUTO_ENV, "").strip()
    if forced:
        if forced not in PRECISIONS:
            raise ValueError(f"{AUTO_ENV}={forced} is not a precision; use one of: {', '.join(PRECISIONS)}")
        return Choice(forced, f"auto forced to {forced} by {AUTO_ENV}")
    kind = kind or hardware()
    precision, why = AUTO_RULES.get(
        (kind, work), ("float32", "no measurement shows mixed precision faster at equal quality")
    )
    return Choice(precision, f"auto -> {precision} for {work} on {kind}: {why}")


def resolve_precision(name: str, work: str = "decode") -> str:
    """A concrete precision: "auto" as `choose_auto(work)` says; the others as given."""
    if name == "auto":
        return choose_auto(work).precision
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision '{name}'; choose auto or one of: {', '.join(PRECISIONS)}")
    return name


def rnn_use_cudnn(compute_dtype: str) -> str | bool:
    """`use_cudnn` for a keras.layers.LSTM or GRU computing in `compute_dtype`: "auto" (cuDNN where Keras can) for
    float32, False otherwise. Under JAX on a GPU, Keras's cuDNN LSTM (jax.experimental.rnn) fails to compile
    for bfloat16 ("ValueError: Unknown output type bfloat16"; Keras 3.15.1, jax 0.11.2, an H200, 2026-11-26),
    and it fails after Keras's own fall-back check, so "auto" does not catch it; the generic loop works."""
    return "auto" if compute_dtype == "float32" else False


def apply_precision(model, name: str, work: str = "decode"):
    """`model` (a Keras layer or model) with it and every layer inside it computing at precision `name` ("auto"
    resolved for `work`), returned. The policy is passed to each layer, never set globally: the builders and
    `load_run` call this on what they built or loaded. Variables stay float32 under every policy, so weights built,
    trained or loaded under one precision serve any other; a recurrent layer uses cuDNN only in float32
    (`rnn_use_cudnn`). Keras's `_flatten_layers` is the walk over nested layers (keras.applications backbones
    take no dtype argument, so theirs are set here too)."""
    policy = keras.dtype_policies.get(resolve_precision(name, work))
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.InputLayer):  # its dtype is the input's, not a compute policy
            continue
        layer.dtype_policy = policy
        if isinstance(layer, (keras.layers.LSTM, keras.layers.GRU)):
            layer.use_cudnn = rnn_use_cudnn(policy.compute_dtype)
    return model
