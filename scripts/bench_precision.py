#!/usr/bin/env python
"""Utilisation per precision: FLOPs per step, ms/step, achieved GFLOP/s and its share of the measured matmul peaks.

Everything runs in one process, side by side: the float32 / bfloat16 / float16 peak of a 2048x2048 matmul in a
`tf.function`, then for each precision (a) a training step of `shapes` Show-and-Tell and Show-Attend-Tell
(32 images x 5 captions, 64x64 pixels, the small CNN trained), (b) a training step of the `flickr8k`
Show-Attend-Tell preset on cached features of the real shape (32 x 7x7x1280 float16, 160 captions of 21
steps), (c) feature extraction with MobileNetV2 and EfficientNet-B0 at 224 px (batch 32), (d) decoding with
the `shapes` Show-and-Tell model at batch 512, greedy and beam 5. Weights are random: speed does not depend
on them (decoding runs all `max_length` steps either way when no caption ends early... here it may end
early, so decoding numbers are per call as measured).

FLOPs (2 per multiply-add) are counted analytically for the decoder (LSTM gates, output projection,
attention projections, scores, context and gate, per caption-word; initial state and grid projection per
image) and with TensorFlow's profiler for the CNNs (Conv2D, MatMul, ...; no loops inside a CNN). A training
step is counted as 3x its forward FLOPs (backward = 2x forward), the frozen CNN of the cached path as 0.

Under KERAS_BACKEND=jax the peaks and the steps are JAX's (jax.jit) and CNN FLOPs are XLA's cost analysis of
the compiled forward pass; TensorFlow is then not needed (the GPU machine has none). On a GPU JAX computes
float32 matmuls with TensorFloat-32 by default: the peak is measured both ways ("float32" = the default,
"float32 highest" = jnp.matmul(precision="highest")), and the float32 rows run with the default.

    python scripts/bench_precision.py [--steps 10] [--precisions float32,mixed_bfloat16] [--skip decode] [--peak-size
    2048]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from captioner.backend import CompiledFunction
from captioner.config import DecodeConfig, ModelConfig, preset
from captioner.data.vocab import Vocabulary
from captioner.generation.decoding import CaptionGenerator
from captioner.models.networks import build_caption_model, build_image_encoder


def matmul_peak(dtype: str, n: int = 2048, reps: int = 20, highest: bool = False) -> float:
    """GFLOP/s of an n x n matmul compiled by the backend (a tf.function, or jax.jit; `highest`: JAX's full
    float32 precision instead of its default, TensorFloat-32 on recent GPUs)."""
    a, b = (keras.ops.cast(keras.random.normal((n, n), seed=i), dtype) for i in range(2))
    if keras.backend.backend() == "jax":
        import jax

        if highest:
            product = jax.jit(lambda x, y: jax.numpy.matmul(x, y, precision="highest"))
        else:
            product = jax.jit(keras.ops.matmul)
        wait = lambda x: x.block_until_ready()  # noqa: E731
    else:
        import tensorflow as tf

        product, wait = tf.function(tf.linalg.matmul), lambda x: x.numpy()
    wait(product(a, b))
    started = time.perf_counter()
    for _ in range(reps):
        result = product(a, b)
    wait(result)
    return 2 * n**3 * reps / (time.perf_counter() - started) / 1e9


def cnn_flops(cnn: keras.Model, size: int) -> float | None:
    """Forward FLOPs of one image through a CNN: TensorFlow's profiler, or XLA's cost analysis under JAX."""
    if keras.backend.backend() == "jax":
        import jax

        def forward(trainable, non_trainable, x):
            return cnn.stateless_call(trainable, non_trainable, x, training=False)[0]

        # The HLO lowered for a CPU, not compiled: on a GPU the convolutions become cuDNN calls that the cost
        # analysis does not count (it reported 0.6 instead of 19.6 GFLOP for MobileNetV2 on an H200).
        lowered = (
            jax.jit(forward)
            .trace(
                [v.value for v in cnn.trainable_variables],
                [v.value for v in cnn.non_trainable_variables],
                np.zeros((1, size, size, 3), "float32"),
            )
            .lower(lowering_platforms=("cpu",))
        )
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost["flops"]) if cost and "flops" in cost else None
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    graph = (
        tf.function(lambda x: cnn(x, training=False))
        .get_concrete_function(tf.TensorSpec((1, size, size, 3), tf.float32))
        .graph
    )
    options = (
        option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation())
        .with_empty_output()
        .build()
    )
    return float(model_analyzer.profile(graph, options=options).total_float_ops)


def decoder_flops(model, images: int, captions: int, steps: int, with_cnn: bool) -> float | None:
    """Forward FLOPs of one caption batch (images x captions x steps words)."""
    encoder, decoder = model.encoder, model.decoder
    hidden, vocab, embed = decoder.hidden_dim, decoder.vocab_size, decoder.embedding_dim
    pixels, channels = encoder.num_pixels, encoder.encoder_dim
    image_dim = channels if decoder.state_init == "grid_mean" else encoder.pooled_dim
    per_image = 2 * 2 * image_dim * hidden  # init_h, init_c
    if encoder.projection is not None:
        per_image += 2 * pixels * channels * encoder.pooled_dim
    lstm_input = embed
    per_word = 2 * hidden * vocab  # output projection
    if decoder.uses_attention:
        attention = decoder.attention_dim
        per_image += 2 * pixels * channels * attention  # grid projection, once per image
        per_word += 2 * hidden * attention + 2 * pixels * attention + 2 * pixels * channels + 2 * hidden * channels
        lstm_input += channels
    per_word += 2 * (lstm_input + hidden) * 4 * hidden  # the four LSTM gates
    total = images * per_image + images * captions * steps * per_word
    if with_cnn:
        cnn = cnn_flops(encoder.cnn, encoder.image_size)
        if cnn is None:  # not countable under this backend
            return None
        total += images * cnn
    return float(total)


def time_calls(call, reps: int) -> float:
    """Seconds per call after two warm-up calls (tracing)."""
    for _ in range(2):
        call()
    started = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - started) / reps


TRAIN_ROWS = {  # name -> table label
    "shapes-nic": "shapes Show-and-Tell, train step",
    "shapes-sat": "shapes Show-Attend-Tell, train step",
    "flickr8k": "flickr8k Show-Attend-Tell, cached features, train step",
}


def train_row_inputs(name: str):
    """(config, vocab size, inputs, targets) of one training row: random weights, a batch of the real shapes
    (`shapes`: 32 images x 5 captions of 13 steps; `flickr8k`: 32 cached 7x7x1280 grids, captions of 21 steps)."""
    rng = np.random.default_rng(0)
    if name == "flickr8k":
        config = preset("flickr8k")
        config.model.encoder_weights = None
        config.data.image_size = 224
        tokens = rng.integers(4, 2500, (32, 5, 21)).astype("int32")
        return (
            config,
            2573,
            {"features": rng.standard_normal((32, 49, 1280)).astype("float16"), "tokens": tokens},
            tokens,
        )
    config = preset("shapes")
    config.model.decoder = "attention" if name == "shapes-sat" else "lstm"
    tokens = rng.integers(4, 60, (32, 5, 13)).astype("int32")  # the shapes split's longest caption (12 words) + 1
    return config, 60, {"images": rng.integers(0, 255, (32, 64, 64, 3)).astype("uint8"), "tokens": tokens}, tokens


def compiled_caption_model(config, vocab_size: int, precision: str):
    """The row's model from seed 0 at `precision`, compiled as training compiles it."""
    keras.utils.set_random_seed(0)
    model = build_caption_model(config.model, vocab_size, config.data.image_size, precision)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=5.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    )
    return model


def train_step_row(name: str, reps: int, precision: str) -> dict:
    config, vocab_size, inputs, targets = train_row_inputs(name)
    model = compiled_caption_model(config, vocab_size, precision)
    seconds = time_calls(lambda: model.train_on_batch(inputs, targets), reps)
    images, captions, steps = targets.shape
    forward = decoder_flops(model, images, captions, steps, with_cnn="images" in inputs)
    flops = 3 * forward if forward is not None else None
    return {
        "name": TRAIN_ROWS[name],
        "seconds": seconds,
        "flops": flops,
        "items": f"{images * captions / seconds:.0f} captions/s",
    }


def rows_for(precision: str, reps: int, skip: set[str]):
    """Yields one row (a dict) at a time, so a slow machine prints as it goes."""
    rng = np.random.default_rng(0)
    if "train" not in skip:
        for name in TRAIN_ROWS:
            yield train_step_row(name, reps, precision)
    if "features" not in skip:
        for backbone in ("mobilenet_v2", "efficientnet_b0"):
            keras.utils.set_random_seed(0)
            encoder = build_image_encoder(
                ModelConfig(encoder=backbone, encoder_weights=None, encoder_trainable=False), 224, precision=precision
            )
            batch = rng.integers(0, 255, (32, 224, 224, 3)).astype("uint8")
            run = CompiledFunction(
                lambda x, encoder=encoder: encoder(x, training=False),
                encoder.variables,
                [((None, 224, 224, 3), "uint8")],
            )
            seconds = time_calls(lambda run=run, batch=batch: run(batch), max(2, reps // 2))
            flops = cnn_flops(encoder.cnn, 224)
            yield {
                "name": f"features {backbone}, batch 32",
                "seconds": seconds,
                "flops": 32 * flops if flops else None,
                "items": f"{32 / seconds:.0f} images/s",
            }
    if "decode" not in skip:
        keras.utils.set_random_seed(0)
        shapes = preset("shapes")
        model = build_caption_model(shapes.model, 60, 64, precision)
        vocab = Vocabulary.build(" ".join(f"w{i}" for i in range(56)) for _ in range(1))
        batch = rng.integers(0, 255, (512, 64, 64, 3)).astype("uint8")
        for beam in (1, 5):
            generator = CaptionGenerator(
                model, vocab, DecodeConfig(max_length=shapes.decode.max_length, beam_size=beam)
            )
            generator(batch)  # trace
            seconds = time_calls(lambda generator=generator: generator(batch), 2)
            yield {
                "name": f"decode shapes Show-and-Tell, batch 512, {'greedy' if beam == 1 else f'beam {beam}'}",
                "seconds": seconds,
                "flops": None,
                "items": f"{512 / seconds:.0f} captions/s",
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed calls per row, after two warm-up calls")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--skip", default="", help="comma-separated: train, features, decode")
    parser.add_argument(
        "--peak-size", type=int, default=2048, help="n of the n x n matmul whose speed is the peak (8192 on a GPU)"
    )
    args = parser.parse_args()
    n = args.peak_size
    peaks = {name: matmul_peak(name, n) for name in ("float32", "bfloat16", "float16")}
    if keras.backend.backend() == "jax":
        import jax

        peaks["float32 highest"] = matmul_peak("float32", n, highest=True)
        print(f"devices: {jax.devices()}")
    print(
        f"backend {keras.backend.backend()}; matmul {n}x{n} peak GFLOP/s: "
        + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
    )
    print("| row | precision | GFLOP/step | ms/step | achieved GFLOP/s | of fp32 peak | of bf16 peak | throughput |")
    print("|---|---|---|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        for row in rows_for(precision, args.steps, set(filter(None, args.skip.split(",")))):
            flops = row["flops"]
            rate = flops / row["seconds"] / 1e9 if flops else None
            cells = [
                f"{flops / 1e9:.1f}" if flops else "-",
                f"{row['seconds'] * 1000:.{0 if row['seconds'] >= 0.1 else 2}f}",
                f"{rate:.0f}" if rate else "-",
                f"{rate / peaks['float32']:.0%}" if rate else "-",
                f"{rate / peaks['bfloat16']:.0%}" if rate else "-",
            ]
            print(f"| {row['name']} | {precision} | " + " | ".join(cells) + f" | {row['items']} |", flush=True)


if __name__ == "__main__":
    main()
