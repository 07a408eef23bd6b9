"""What differs between Keras backends, in one place: compiling a function, the devices there are, and
importing TensorFlow without its start-up noise.

Model code, generation and answering are written in `keras.ops`; only this module (and the `tf.data` input
pipeline, which feeds every backend) imports TensorFlow or JAX. The backend is Keras's: `KERAS_BACKEND`
or `~/.keras/keras.json`, read when Keras is first imported. Keras is imported inside the functions, so the CLI can import this module
before Keras (and TensorFlow) are loaded.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import Callable, Sequence

import numpy as np


def name() -> str:
    """"tensorflow", "jax" or "torch"."""
    import keras

    return keras.backend.backend()


def bucket(size: int) -> int:
    """The batch size a batch of `size` rows is padded to under JAX: the next power of two (at least 8), so a
    jit-compiled function is compiled for a handful of shapes, not once per batch size."""
    return max(8, 1 << (max(int(size), 1) - 1).bit_length())


class CompiledFunction:
    """`fn(*arrays)` compiled once by the backend's own compiler, called with numpy arrays, returning numpy.

    TensorFlow: a `tf.function` with `specs` as its input signature (None in the batch axis), so one trace
    serves every batch size. JAX: `jax.jit` of a stateless version of `fn` that takes the values of
    `variables` as arguments (as keras-hub's samplers do) instead of baking the weights in as constants;
    batches are padded along axis 0 to `bucket(batch)` rows and the padding is cut off the outputs (every
    output has the batch first). Other backends run `fn` eagerly.

    Args:
        fn: callable of backend tensors returning a tuple of tensors, batch first.
        variables: list of keras.Variable that `fn` reads (a model's `variables`).
        specs: sequence of (shape, dtype) per argument; the shape's first entry is the batch (None).
    """

    def __init__(self, fn: Callable, variables: Sequence, specs: Sequence[tuple[tuple, str]]):
        import keras

        self.fn = fn
        self.variables = list(variables)
        self.specs = [(tuple(shape), dtype) for shape, dtype in specs]
        self.trace_count = 0  # Python side effect inside the traced function: counts traces, not calls
        backend = name()
        if backend == "tensorflow":
            import tensorflow as tf

            signature = [tf.TensorSpec(shape, dtype) for shape, dtype in self.specs]
            self._compiled = tf.function(self._traced, input_signature=signature)
        elif backend == "jax":
            import jax

            def stateless(values, *arrays):
                with keras.StatelessScope(state_mapping=list(zip(self.variables, values))):
                    return self._traced(*arrays)

            self._compiled = jax.jit(stateless)
        else:
            self._compiled = None

    def _traced(self, *arrays):
        self.trace_count += 1
        return self.fn(*arrays)

    def eager(self, *arrays) -> tuple[np.ndarray, ...]:
        """The same computation, op by op: no trace (faster for one small batch on TensorFlow)."""
        import keras

        return tuple(keras.ops.convert_to_numpy(x) for x in self.fn(*self._tensors(arrays)))

    def _tensors(self, arrays):
        import keras

        return [keras.ops.convert_to_tensor(np.asarray(a), dtype) for a, (_, dtype) in zip(arrays, self.specs)]

    def __call__(self, *arrays) -> tuple[np.ndarray, ...]:
        backend = name()
        if self._compiled is None:
            return self.eager(*arrays)
        if backend == "jax":
            rows = len(arrays[0])
            padded = bucket(rows)
            arrays = [np.concatenate([a, np.zeros((padded - rows, *a.shape[1:]), a.dtype)]) if padded > rows else a
                      for a in (np.asarray(a) for a in arrays)]
            outputs = self._compiled([v.value for v in self.variables], *self._tensors(arrays))
            return tuple(np.asarray(x)[:rows] for x in outputs)
        return tuple(x.numpy() for x in self._compiled(*self._tensors(arrays)))


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """(major, minor) of every CUDA GPU the backend sees; [] on a CPU-only machine."""
    try:
        if name() == "jax":
            import jax

            return [tuple(int(x) for x in str(d.compute_capability).split(".")) for d in jax.devices("gpu")]
        import tensorflow as tf

        return [tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)))
                for gpu in tf.config.list_physical_devices("GPU")]
    except Exception:  # no GPU support in this install: no GPU
        return []


# What TensorFlow, absl and oneDNN print on stderr when TensorFlow is imported: start-up chatter, not news.
_IMPORT_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} [\d:. ]+\d+ \S+\.cc:\d+\]|"
    r"To enable the following instructions|oneDNN custom operations are on|This TensorFlow binary is optimized)"
)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with stderr (the file descriptor: C++ writes there) sent to a temporary file, then
    pass on every line that is not start-up noise; TensorFlow's own Python logger is set to errors only.

    The CLI calls this before anything imports Keras (which imports TensorFlow under every backend, for
    tf.data); `--verbose` or CAPTIONER_TF_LOGS=1 skip it: everything TensorFlow says is shown.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        lines = captured.read().decode("utf-8", "replace").splitlines()
    kept = [line for line in lines if line.strip() and not _IMPORT_NOISE.match(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr)
    tf.get_logger().setLevel("ERROR")  # e.g. retracing notices, which say nothing a user can act on
