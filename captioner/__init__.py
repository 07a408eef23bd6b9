"""captioner: image captioning and visual question answering with Keras 3 / TensorFlow."""

__version__ = "0.1.0"
