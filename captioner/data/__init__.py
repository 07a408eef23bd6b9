"""Data: annotation files -> records (`loaders`, `records`, `captions`, `questions`, `shapes`), vocabularies
(`vocab`), images (`images`), padded arrays (`arrays`) and `tf.data` pipelines (`preprocessing`).

The package itself re-exports the dataset loaders' API (what `captioner.datasets` was).
"""

from captioner.data.loaders import DATASETS, QA_DATASETS, load_qa_split, load_sources, load_split, mix, sources
from captioner.data.questions import ANSWER_TYPES, answer_type
from captioner.data.records import CaptionRecord, QAPair, QARecord, Skipped, read_split_file

__all__ = [
    "DATASETS",
    "QA_DATASETS",
    "load_split",
    "load_qa_split",
    "load_sources",
    "mix",
    "sources",
    "ANSWER_TYPES",
    "answer_type",
    "CaptionRecord",
    "QAPair",
    "QARecord",
    "Skipped",
    "read_split_file",
]
