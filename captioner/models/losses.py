"""The training loss of both tasks: sparse cross-entropy over the targets that count, the same on 1 device or many."""

from __future__ import annotations

import keras
from keras import ops

from captioner.distribute import global_sum


@keras.saving.register_keras_serializable(package="captioner")
class TokenCrossentropy(keras.losses.Loss):
    """Sparse cross-entropy from logits, averaged over the targets of the global batch that are not `ignore_class`.

    This is `SparseCategoricalCrossentropy(from_logits=True, ignore_class=...)` on one device. Keras's own loss
    averages over each replica's valid targets, and `MirroredStrategy` then averages the replicas: with captions of
    different lengths on each device that is another loss than one device's. Here each replica divides its sum by
    the valid targets of all replicas (`distribute.global_sum`) and the replicas' gradients add up, so 2 devices
    train as 1 with the same global batch. JAX needs nothing: its step sees the whole global batch.

    Args:
        ignore_class: int. The target id that is not scored (`<pad>`, or VQA's `<other>`).
    """

    def __init__(self, ignore_class: int = 0, name: str = "token_crossentropy", **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(reduction="sum", name=name, **kwargs)
        self.ignore_class = int(ignore_class)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")  # (batch, ...)
        valid = ops.cast(ops.not_equal(y_true, self.ignore_class), "float32")  # (batch, ...)
        losses = ops.sparse_categorical_crossentropy(
            ops.where(valid > 0, y_true, 0), ops.cast(y_pred, "float32"), from_logits=True
        )
        return losses * valid / ops.maximum(global_sum(ops.sum(valid)), 1.0)  # (batch, ...): sums to the global mean

    def get_config(self):
        return {"ignore_class": self.ignore_class, "name": self.name, "dtype": self.dtype}
