"""Visual question answering: question and answer vocabularies, images + grouped questions -> tf.data,
VQAModel (optionally on a captioning run's encoder), cross-entropy over known answers, accuracy per type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
from keras import ops

from captioner.config import RunConfig
from captioner.data import QARecord, Skipped, load_qa_split, sources
from captioner.data.arrays import group_questions
from captioner.data.images import read_image
from captioner.data.vocab import AnswerVocabulary, Vocabulary, tokenize
from captioner.distribute import InputShard
from captioner.errors import CaptionerError
from captioner.evaluation.evaluate import evaluate_vqa, vqa_summary_lines
from captioner.generation.answering import Answerer
from captioner.models.encoder import ImageEncoder, default_image_size
from captioner.models.losses import TokenCrossentropy
from captioner.models.networks import build_vqa_model, copy_weights, training_work
from captioner.run import ANSWERS_FILE, VOCAB_FILE, Run, load_run
from captioner.tasks import base
from captioner.tasks.base import EvalOptions, Setup, Task


class AnsweredAccuracy(keras.metrics.Metric):
    """Top-1 accuracy over real questions: padding slots and `<other>` targets (id 0) are left out, and
    `<other>` is never the prediction (as at inference)."""

    def __init__(self, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")  # (batch, questions)
        predicted = ops.argmax(y_pred[..., 1:], axis=-1) + 1  # (batch, questions)
        real = ops.cast(ops.not_equal(y_true, 0), "float32")  # (batch, questions)
        self.correct.assign_add(ops.sum(ops.cast(ops.equal(ops.cast(predicted, "int32"), y_true), "float32") * real))
        self.total.assign_add(ops.sum(real))

    def result(self):
        return self.correct / ops.maximum(self.total, 1.0)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)


def _first_images(records: list[QARecord], limit: int | None) -> list[QARecord]:
    """The questions of the first `limit` distinct images (all when limit is None)."""
    if limit is None:
        return records
    kept: set[str] = set()
    result = []
    for record in records:
        if record.image not in kept and len(kept) >= limit:
            continue
        kept.add(record.image)
        result.append(record)
    return result


def _trained_on(run: Run) -> list[QARecord] | None:
    """The questions a run was trained on, from every source (None where its folders cannot be read any more: then
    `evaluate` counts the train split beside the scored one)."""
    data, vqa = run.config.data, run.config.vqa
    try:
        parts = base.source_records(
            load_qa_split, data, run.config.train.train_split, lambda r: r, Skipped(), answer_type=vqa.answer_type
        )
    except CaptionerError:
        return None
    return [r for part in parts for r in part]


def _check_answer_types(data, parts: list[list[QARecord]]) -> None:
    """Sources mixed in one run ask the same types of question: one that brings another type is named."""
    first = {r.answer_type for r in parts[0]}
    for number, ((name, folder), part) in enumerate(
        zip(sources(data.dataset, data.data_dir, data.more_sources), parts), 1
    ):
        types = {r.answer_type for r in part}
        if number > 1 and types != first:
            raise CaptionerError(
                f"source {number} ({name} in {folder}) has {', '.join(sorted(types))} answers where source 1 has "
                f"{', '.join(sorted(first))}: pass --answer-type to keep one type, or train on sources of the same kind"
            )


def _shared_encoder(source: str, fine_tune: bool) -> ImageEncoder:
    """A copy of a trained captioning run's ImageEncoder, weights included (frozen unless fine_tune)."""
    run = load_run(source, task="caption")
    original = run.model.encoder
    encoder = ImageEncoder.from_config(original.get_config())
    size = encoder.image_size
    encoder.build((None, size, size, 3))
    encoder.set_weights(original.get_weights())
    encoder.trainable = fine_tune
    return encoder


class VQATask(Task):
    name = "vqa"
    item_name = "questions"
    skipped_item = "questions"

    def answerer(self, run: Run) -> Answerer:
        return Answerer(run.model, run.vocab, run.answers, run.config.vqa.max_question_length)

    def evaluate(self, run: Run, options: EvalOptions, skipped: Skipped) -> dict[str, Any]:
        dataset, data_dir = base.scored_source(run.config.data, options.dataset, options.data_dir)
        return evaluate_vqa(
            run,
            options.split,
            data_dir,
            options.batch_size,
            options.out,
            options.max_images,
            skipped=skipped,
            dataset=dataset,
            train_records=_trained_on(run),
            black_images=options.black_images,
        )

    def summary_lines(self, result: dict[str, Any]) -> list[str]:
        return vqa_summary_lines(result)

    def setup(
        self,
        config: RunConfig,
        run_dir: Path,
        resuming: bool,
        verbose: int | str,
        skipped: Skipped,
        source: keras.Model | None = None,
        shard: InputShard = InputShard(),
    ) -> Setup:
        from captioner.data.preprocessing import feature_vqa_dataset, vqa_dataset  # tf.data: training only

        data, train_cfg, vqa = config.data, config.train, config.vqa
        train_parts = base.source_records(
            load_qa_split,
            data,
            train_cfg.train_split,
            lambda r: _first_images(r, train_cfg.max_train_images),
            skipped,
            answer_type=vqa.answer_type,
        )
        val_parts = base.source_records(
            load_qa_split,
            data,
            train_cfg.val_split,
            lambda r: _first_images(r, train_cfg.max_val_images),
            skipped,
            answer_type=vqa.answer_type,
        )
        _check_answer_types(data, train_parts)
        train_records, val_records = base.mixed(train_parts, config), base.mixed(val_parts, config, validation=True)
        distinct_train = [
            r for part in train_parts for r in part
        ]  # the vocabularies count each question once, whatever the weights
        encoder = _shared_encoder(vqa.encoder_from, bool(config.model.encoder_trainable)) if vqa.encoder_from else None
        image_size = (
            encoder.image_size if encoder is not None else default_image_size(config.model.encoder, data.image_size)
        )
        if resuming:
            vocab = Vocabulary.load(run_dir / VOCAB_FILE)
            answers = AnswerVocabulary.load(run_dir / ANSWERS_FILE)
        else:
            data = base.resolved_folders(data)
            if train_cfg.init_from:  # the source's vocabularies and question length, which train checked this run keeps
                vocab = Vocabulary.load(Path(train_cfg.init_from) / VOCAB_FILE)
                answers = AnswerVocabulary.load(Path(train_cfg.init_from) / ANSWERS_FILE)
            else:
                vocab = Vocabulary.build((r.question for r in distinct_train), min_count=data.min_word_count)
                answers = AnswerVocabulary.build((r.answer for r in distinct_train), max_size=vqa.num_answers)
                longest = max(len(tokenize(r.question)) for r in distinct_train)
                data = replace(data, image_size=image_size)
                vqa = replace(
                    vqa,
                    max_question_length=min(vqa.max_question_length, longest),
                    encoder_from=str(Path(vqa.encoder_from).resolve()) if vqa.encoder_from else None,
                )
            config = replace(config, data=data, vqa=vqa)

        model = build_vqa_model(config, len(vocab), len(answers), image_size, encoder)
        if source is not None:
            copy_weights(source, model)
        stats: dict[str, Any] = (
            {"sources": base.source_stats(config.data, train_parts, train_records, val_parts)}
            if len(train_parts) > 1
            else {}
        )
        cache = None
        if training_work(config) == "train_cached":
            # A frozen pretrained CNN: run it once per photo (the cache captioning uses), then train on its features.
            cache, train_records, val_records = base.cached_train_val(
                config, model.encoder, train_records, val_records, verbose, skipped, stats, shard
            )

        def batches(records, shuffle):
            groups = group_questions(records, vqa.questions_per_image)
            if cache is not None:
                # (groups, num_pixels, encoder_dim), read per batch
                features = cache.rows([image for image, _ in groups])
                dataset = feature_vqa_dataset(
                    features,
                    groups,
                    vocab,
                    answers,
                    vqa.questions_per_image,
                    vqa.max_question_length,
                    train_cfg.batch_size,
                    shuffle=shuffle,
                    seed=train_cfg.seed,
                    shard=shard,
                )
            else:
                split = train_cfg.train_split if shuffle else train_cfg.val_split
                dataset = vqa_dataset(
                    groups,
                    vocab,
                    answers,
                    image_size,
                    vqa.questions_per_image,
                    vqa.max_question_length,
                    train_cfg.batch_size,
                    shuffle=shuffle,
                    seed=train_cfg.seed,
                    cache=data.cache_images,
                    on_error=skipped.unreadable,
                    what=f"images of the {split} split",
                    shard=shard,
                )
            return dataset, len(groups)

        train_data, train_groups = batches(train_records, True)
        val_data, _ = batches(val_records, False)
        return Setup(
            config=config,
            model=model,
            loss=TokenCrossentropy(ignore_class=AnswerVocabulary.other_id),
            metrics=[AnsweredAccuracy()],
            train_data=train_data,
            val_data=val_data,
            train_images=train_groups,
            train_items=len(train_records),
            stats={
                "train_images": len({r.image for r in train_records}),
                "train_questions": len(train_records),
                "val_questions": len(val_records),
                "vocab_size": len(vocab),
                "num_answers": len(answers),
                "val_answer_coverage": answers.coverage(r.answer for r in val_records),
                "unknown_word_rate_val": vocab.unknown_rate(r.question for r in val_records),
                **stats,
            },
            vocab=vocab,
            answers=answers,
        )


def ask(run: Run, image_path: str, questions: Sequence[str], top: int = 5) -> dict[str, Any]:
    """Answer questions about one image file: {"image", "width", "height", "answers": [...]}, one entry per
    question with "answer" and the `top` most probable answers ({"answer", "probability"}), a "warning" for
    words the model never saw, or an "error" for a question with no words (the others are still answered)."""
    answerer = VQATask().answerer(run)
    image, (width, height) = read_image(image_path, run.model.encoder.image_size)
    results: list[dict[str, Any]] = []
    encoded = []
    for question in questions:
        result: dict[str, Any] = {"question": question}
        words = answerer.encode(question)
        if not words.ids:
            result["error"] = f'question {question!r} has no words; ask something, e.g. "what color is the circle?"'
        else:
            encoded.append(words)
            length = len(tokenize(question))
            if length > answerer.max_question_length:
                result["warning"] = (
                    f"question of {length:,} words; this model reads the first {answerer.max_question_length} "
                    f"(its longest training question)"
                )
            elif words.all_unknown:
                result["warning"] = (
                    f"no word of {question!r} is known to this model; the answer rests on the image alone"
                )
            elif words.unknown_words:
                result["warning"] = (
                    f"word(s) of {question!r} this model never saw, read as <unk>: {', '.join(words.unknown_words)}"
                )
        results.append(result)
    if encoded:
        probabilities, _ = answerer(image[None], answerer.question_array([encoded]))  # (1, questions, answers)
        answerable = [r for r in results if "error" not in r]
        for result, distribution in zip(answerable, probabilities[0]):
            best = answerer.top(distribution, top)
            result.update(answer=best[0][0], top=[{"answer": a, "probability": p} for a, p in best])
    return {"image": image_path, "width": width, "height": height, "answers": results}
