"""What differs between Keras backends, in one place: compiling a function, the devices there are, building a
network whose weights come from a file, and importing TensorFlow without its start-up noise.

Model code, generation and answering are written in `keras.ops`; only this module (and the `tf.data` input
pipeline, which feeds every backend) imports TensorFlow or JAX. The backend is Keras's: `KERAS_BACKEND`
or `~/.keras/keras.json`, read when Keras is first imported. Keras is imported inside the functions, so the CLI can
import this module before Keras (and TensorFlow) are loaded.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np


def name() -> str:
    """ "tensorflow", "jax" or "torch"."""
    import keras

    return keras.backend.backend()


def bucket(size: int) -> int:
    """The batch size a batch of `size` rows is padded to under JAX: the next power of two (at least 8), so a
    jit-compiled function is compiled for a handful of shapes, not once per batch size."""
    return max(8, 1 << (max(int(size), 1) - 1).bit_length())


# Keras's random initialisers under every name a layer argument can give them (class names and their aliases).
RANDOM_INITIALIZERS = (
    "GlorotNormal",
    "GlorotUniform",
    "HeNormal",
    "HeUniform",
    "LecunNormal",
    "LecunUniform",
    "Orthogonal",
    "OrthogonalInitializer",
    "RandomNormal",
    "RandomUniform",
    "TruncatedNormal",
    "VarianceScaling",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "orthogonal",
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "uniform",
    "variance_scaling",
)


@contextlib.contextmanager
def weights_from_file() -> Iterator[None]:
    """Layers built inside this block start from zeros where they would draw random weights: for a network whose
    every weight is loaded from a file next (a backbone's ImageNet weights, a saved run).

    On JAX each random initialiser of a new shape compiles an XLA program of its own: building MobileNetV2 compiled
    42 of them, 17 of the 18 s the build took (BENCHMARKS.md, "Building a network to load on JAX, every path"). Zeros
    cost nothing on any backend. The loaders that follow fail loudly when they leave a weight unfilled
    (`encoder.load_backbone_weights`, `keras.saving.load_model`), so a zero never survives into a model. Initialisers
    given by name are replaced (every layer this project builds, keras.applications and saved runs name them so);
    an initialiser object passed in is left alone.
    """
    import keras

    with keras.saving.custom_object_scope({name: keras.initializers.Zeros for name in RANDOM_INITIALIZERS}):
        yield


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
            arrays = [
                np.concatenate([a, np.zeros((padded - rows, *a.shape[1:]), a.dtype)]) if padded > rows else a
                for a in (np.asarray(a) for a in arrays)
            ]
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

        return [
            tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)))
            for gpu in tf.config.list_physical_devices("GPU")
        ]
    except Exception:  # no GPU support in this install: no GPU
        return []


# The shape of a line of TensorFlow's, XLA's or oneDNN's C++ logging (absl/glog: severity, MMDD, time, thread,
# file:line]) and absl's notice before its logging starts. Fatal ("F...") lines are not noise and pass.
NATIVE_LOG_LINE = re.compile(
    r"^(?:[IWE]\d{4} +[\d:.]+ +\d+ +[^ \]]+:\d+\]|WARNING: All log messages before absl::InitializeLog)"
)

# The filter process: what arrives on fd 2 (native writes only) goes to the real stderr, less native log lines and
# the lines read together with one, after it (a message's continuation, e.g. "To enable the following ..."; a
# non-logging line written in the same instant after a log line would go too). Fatal lines and crash reports pass.
_FILTER = r"""
import os, re, sys
header = re.compile(sys.argv[1])
while True:
    try:
        chunk = os.read(0, 1 << 16)
    except InterruptedError:
        continue
    if not chunk:
        break
    kept, dropping = [], False
    for line in chunk.decode("utf-8", "replace").splitlines(keepends=True):
        if header.match(line):
            dropping = True
        elif not dropping or line.startswith(("F0", "Fatal", "Traceback", "terminate called")):
            dropping = False
            kept.append(line)
    if kept:
        os.write(1, "".join(kept).encode("utf-8"))
"""


def filter_native_logs() -> None:
    """From now on, lines of native (C++) logging written to stderr by TensorFlow, XLA, oneDNN or absl are dropped,
    whatever their message and whenever they come: file descriptor 2 becomes a pipe into a small filter process that
    passes on everything else; Python's own `sys.stderr` writes to the real stderr directly. The filter is a process,
    not a thread, so what a crash writes still gets through. The CLI calls this before importing TensorFlow;
    `--verbose` or CAPTIONER_TF_LOGS=1 skip it (TF_CPP_MIN_LOG_LEVEL is then left as the user set it)."""
    import atexit
    import subprocess

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # most of it is not even written
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-S", "-c", _FILTER, NATIVE_LOG_LINE.pattern],
            stdin=read_end,
            stdout=real,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
    except OSError:  # no process to spare: leave stderr as it is
        for fd in (read_end, write_end, real):
            os.close(fd)
        return
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = open(
        real, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace", closefd=False
    )

    def finish() -> None:  # close the pipe's last write end, so the filter drains it and exits before we do
        sys.stderr.flush()
        os.dup2(real, 2)
        try:
            child.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass

    atexit.register(finish)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and set its Python logger to errors only (retracing notices say nothing a user can act
    on); after `filter_native_logs`, which drops its native start-up lines."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
