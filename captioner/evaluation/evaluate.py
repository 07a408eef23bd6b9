"""Score a trained run on a split: caption runs by BLEU on generated captions (never teacher-forced output),
VQA runs by VQA accuracy, per answer type and question type, beside blind baselines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captioner.config import DecodeConfig
from captioner.data import CaptionRecord, QARecord, Skipped, load_qa_split, load_split
from captioner.data.arrays import group_questions, question_arrays
from captioner.data.questions import question_subject
from captioner.data.vocab import tokenize
from captioner.errors import CaptionerError
from captioner.evaluation.metrics import (
    TOKENIZATIONS,
    accuracy_table,
    bleu_scores,
    blind_baselines,
    coco_scores,
    diversity,
    human_agreement,
    oracle_bleu,
    text_scores,
    train_overlap,
)
from captioner.fileio import write_json
from captioner.generation.answering import Answerer
from captioner.generation.decoding import CaptionGenerator
from captioner.run import Run, update_metrics


def _readable_batches(
    paths: Sequence[str], image_size: int, batch_size: int, on_error: Callable[[str, str], None] | None, what: str
):
    """(start, images, readable) for consecutive batches of `paths`: images uint8 (batch, size, size, 3), readable
    bool (batch,).

    An unreadable image is reported through `on_error` (or raises CaptionerError when it is None); an error
    inside the pipeline becomes one CaptionerError line.
    """
    from captioner.data.preprocessing import (
        PipelineFailure,
        image_dataset,
        pipeline_error,
    )  # tf.data: not for ask/caption

    if on_error is None:

        def on_error(path: str, message: str) -> None:
            raise CaptionerError(message)

    batches = image_dataset(paths, image_size, on_error, what).batch(batch_size).prefetch(1)
    try:
        for start, (images, readable) in zip(range(0, len(paths), batch_size), batches):
            yield start, images.numpy(), readable.numpy()
    except PipelineFailure as exc:
        raise pipeline_error(exc) from None


def generate_captions(
    generator: CaptionGenerator,
    paths: Sequence[str],
    batch_size: int = 256,
    on_error: Callable[[str, str], None] | None = None,
    what: str = "images",
) -> list[str | None]:
    """Captions for image files, decoded in parallel and generated in batches; None for an image that cannot be
    read (reported through `on_error(path, message)`; without it, such an image is an error)."""
    captions: list[str | None] = [None] * len(paths)
    for start, images, readable in _readable_batches(
        paths, generator.model.encoder.image_size, batch_size, on_error, what
    ):
        rows = np.flatnonzero(readable)
        if len(rows):
            for row, caption in zip(rows, generator(images[rows]).captions):
                captions[start + row] = caption
    return captions


def score(records: Sequence[CaptionRecord], captions: Sequence[str], meteor: bool = False) -> dict[str, Any]:
    """BLEU-1..4, the COCO metrics (pycocoevalcap, when installed), how generic the captions are beside the same
    figures for reference #0 of every image, the oracle (reference #0 against the others), and BLEU per number
    of objects where the records say it."""
    references = [[tokenize(c) for c in r.captions] for r in records]
    hypotheses = [tokenize(c) for c in captions]
    result: dict[str, Any] = {
        **bleu_scores(references, hypotheses),
        "coco": coco_scores(references, hypotheses, meteor=meteor),
        **diversity(captions),
        "mean_length": mean_caption_length(captions),
        "unknown_word_captions": sum("<unk>" in c for c in captions),
        "images": len(records),
        "references": {
            **diversity([r.captions[0] for r in records]),
            "mean_length": mean_caption_length([r.captions[0] for r in records]),
        },
    }
    if any(len(refs) > 1 for refs in references):  # needs a second reference to score the first against
        result["oracle"] = oracle_bleu(references)
    counts = [r.meta.get("num_objects") for r in records]
    if all(c is not None for c in counts):
        groups: dict[str, list[int]] = {}
        for i, count in enumerate(counts):
            groups.setdefault(f"objects={count}", []).append(i)
            if count >= 2:
                groups.setdefault("objects>=2", []).append(i)
        result["by_group"] = {
            name: {**bleu_scores([references[i] for i in idx], [hypotheses[i] for i in idx]), "images": len(idx)}
            for name, idx in sorted(groups.items())
        }
    return result


def evaluate(
    run: Run,
    split: str = "test",
    data_dir: str | None = None,
    decode: DecodeConfig | None = None,
    batch_size: int = 256,
    out: str | Path | None = None,
    max_images: int | None = None,
    meteor: bool = False,
    skipped: Skipped | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Caption every image of `split`, score against all references, record in metrics.json.

    Args:
        run: Run. A loaded run directory.
        split: str. Split to score. Defaults to "test".
        data_dir: str. Dataset folder; defaults to the one the run was trained on.
        decode: DecodeConfig. How captions are generated; defaults to the run's decode settings.
        batch_size: int. Images per generation batch.
        out: path. Where to save the generated captions as JSON, if given.
        max_images: int. Score only the first N images.
        meteor: bool. Also METEOR (pycocoevalcap, runs Java).
        skipped: Skipped. Collects the dataset entries the loader could not use (the result keeps the summary).
        dataset: str. The loader of `data_dir`; defaults to the run's (its first source's).
    """
    data = run.config.data
    decode = decode or run.config.decode
    skipped = skipped if skipped is not None else Skipped()
    records = load_split(dataset or data.dataset, data_dir or data.data_dir, split, skipped)[:max_images]
    generator = CaptionGenerator(run.model, run.vocab, decode)
    started = time.perf_counter()
    captions = generate_captions(
        generator, [r.image for r in records], batch_size, skipped.unreadable, f"images of the {split} split"
    )
    seconds = time.perf_counter() - started
    records, captions = [r for r, c in zip(records, captions) if c is not None], [c for c in captions if c is not None]
    result = score(records, captions, meteor=meteor)
    sampler = generator.sampler.get_config()
    result.update(
        split=split,
        sampler=sampler,
        beam_size=generator.beam_size if sampler["name"] != "sampling" else 1,
        length_penalty=decode.length_penalty,
        constraints={"no_repeat_ngram": decode.no_repeat_ngram, "min_length": decode.min_length},
        seconds=seconds,
        tokenization=TOKENIZATIONS["words"],
        skipped=skipped.summary("entries"),
    )
    if sampler["name"] == "sampling":
        result["seed"] = decode.seed
    if decode.hard_context != "expectation":
        result["hard_context"] = decode.hard_context
    if out is not None:
        write_json(
            out, [{"image": r.image, "caption": c, "references": list(r.captions)} for r, c in zip(records, captions)]
        )
    key = f"eval_{split}_{_decoding_key(result)}"
    if not run.shipped:
        update_metrics(run.path, {key: result})
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for the CLI."""
    bleu = " ".join(f"BLEU-{n}={result[f'bleu{n}']:.4f}" for n in range(1, 5))
    lines = [
        f"{result['split']} ({result['images']} images, {_decoding_name(result)}): {bleu}"
        + "  (x100: "
        + " / ".join(f"{100 * result[f'bleu{n}']:.1f}" for n in range(1, 5))
        + ")",
        _diversity_line("captions", result),
        _diversity_line("reference #0", result["references"]),
    ]
    if result.get("unknown_word_captions"):
        lines.append(f"captions with <unk>: {result['unknown_word_captions']}")
    coco = result.get("coco")
    if coco:
        meteor = "" if coco.get("meteor") is None else f" METEOR={coco['meteor']:.4f}"
        lines.append(
            f"pycocoevalcap: BLEU-4={coco['bleu4']:.4f}{meteor} ROUGE-L={coco['rouge_l']:.4f} CIDEr={coco['cider']:.4f}"
            f"  (x100: {100 * coco['bleu4']:.1f} / {100 * coco['rouge_l']:.1f} / {100 * coco['cider']:.1f})"
        )
    oracle = result.get("oracle")
    if oracle:
        lines.append(
            "oracle (reference #0 vs the others): "
            + " ".join(f"BLEU-{n}={oracle[f'bleu{n}']:.4f}" for n in range(1, 5))
        )
    for name, group in result.get("by_group", {}).items():
        lines.append(f"  {name:<11} ({group['images']:>4} images): BLEU-4={group['bleu4']:.4f}")
    return lines


def _decoding_parts(result: dict[str, Any]) -> list[tuple[str, str]]:
    """A result's decoding as (metrics.json key, human name) pieces: greedy and beam keys as before ("beam1",
    "beam3_lp0.5"); sampling names its settings; constraints follow."""
    sampler = result.get("sampler", {})
    if sampler.get("name") == "sampling":
        seed, count, temperature = result.get("seed", 0), sampler["num_captions"], sampler["temperature"]
        parts = [(f"sampling_t{temperature:g}", f"sampling (temperature {temperature:g}")]
        parts += [
            (f"_{k[4:]}{sampler[k]:g}", f", {k.replace('_', '-')} {sampler[k]:g}")
            for k in ("top_k", "top_p")
            if sampler.get(k) is not None
        ]
        parts.append((f"_n{count}_seed{seed}", f"; best of {count}, seed {seed})"))
    elif result["beam_size"] == 1:
        parts = [("beam1", "greedy")]
    else:
        penalty = result.get("length_penalty", 1.0)
        parts = [(f"beam{result['beam_size']}", f"beam {result['beam_size']}")]
        parts += [] if penalty == 1.0 else [(f"_lp{penalty:g}", f", length penalty {penalty:g}")]
    parts += [(f"_{k}{v}", f", {k.replace('_', ' ')} {v}") for k, v in result.get("constraints", {}).items() if v]
    return parts + (
        [(f"_{result['hard_context']}", f", {result['hard_context']} position")] if "hard_context" in result else []
    )


def _decoding_key(result: dict[str, Any]) -> str:
    return "".join(key for key, _ in _decoding_parts(result))


def _decoding_name(result: dict[str, Any]) -> str:
    return "".join(name for _, name in _decoding_parts(result))


def _diversity_line(what: str, figures: dict[str, Any]) -> str:
    return (
        f"{what}: distinct captions {figures['distinct_captions']:.1%} of images, distinct words "
        f"{figures['distinct_words']}, "
        f"the 10 most common captions cover {figures['top10_share']:.1%} of images, mean length "
        f"{figures['mean_length']:.1f} words, "
        f"a word pair repeated in {figures['repeated_bigram_share']:.1%}"
    )


def mean_caption_length(captions: Sequence[str]) -> float:
    return float(np.mean([len(tokenize(c)) for c in captions])) if captions else 0.0


def answer_records(
    answerer: Answerer,
    records: Sequence[QARecord],
    questions_per_image: int,
    batch_size: int = 256,
    on_error: Callable[[str, str], None] | None = None,
    what: str = "images",
    black: bool = False,
) -> list[str | None]:
    """The predicted answer to every record's question, images decoded in parallel and encoded once per group;
    None where the image cannot be read (reported through `on_error`; without it, an error). `black`: every image
    replaced by a black one (what the model answers from the question alone)."""
    groups = group_questions(records, questions_per_image)
    questions, _ = question_arrays(
        groups, answerer.vocab, answerer.answers, questions_per_image, answerer.max_question_length
    )
    by_record: dict[str, str] = {}
    size = answerer.model.encoder.image_size
    for start, images, readable in _readable_batches([image for image, _ in groups], size, batch_size, on_error, what):
        rows = np.flatnonzero(readable)
        if not len(rows):
            continue
        pixels = np.zeros_like(images[rows]) if black else images[rows]  # (rows, size, size, 3) uint8
        probabilities, _ = answerer(pixels, questions[start + rows])
        for row, distribution_rows in zip(rows, probabilities):
            for record, distribution in zip(groups[start + row][1], distribution_rows):
                by_record[record.question_id] = answerer.answers.answers[int(np.argmax(distribution))]
    return [by_record.get(r.question_id) for r in records]


def evaluate_vqa(
    run: Run,
    split: str = "test",
    data_dir: str | None = None,
    batch_size: int = 256,
    out: str | Path | None = None,
    max_images: int | None = None,
    skipped: Skipped | None = None,
    dataset: str | None = None,
    train_records: list[QARecord] | None = None,
    black_images: bool = False,
) -> dict[str, Any]:
    """Answer every question of `split`, score VQA accuracy, compare with blind baselines, record in metrics.json.

    Args:
        run: Run. A loaded VQA run directory.
        split: str. Split to score. Defaults to "test".
        data_dir: str. Dataset folder; defaults to the one the run was trained on.
        batch_size: int. Images per batch.
        out: path. Where to save every question's answer as JSON, if given.
        max_images: int. Score only the questions of the first N images.
        skipped: Skipped. Collects the questions the loader could not use (the result keeps the summary).
        dataset: str. The loader of `data_dir`; defaults to the run's (its first source's).
        train_records: the questions the run was trained on (what "seen in training" and the blind baselines count);
            default: the train split beside the scored one.
        black_images: also answer every question with a black image instead of the photo: what the image is worth
            to this model (a second pass over the split).
    """
    data, vqa = run.config.data, run.config.vqa
    skipped = skipped if skipped is not None else Skipped()
    records = load_qa_split(dataset or data.dataset, data_dir or data.data_dir, split, skipped, vqa.answer_type)
    if max_images is not None:
        keep = set(list(dict.fromkeys(r.image for r in records))[:max_images])
        records = [r for r in records if r.image in keep]
    if len({r.question_id for r in records}) != len(records):  # ids key the predictions
        records = [
            QARecord(r.image, r.question, r.answers, r.question_type, r.answer_type, str(i))
            for i, r in enumerate(records)
        ]
    answerer = Answerer(run.model, run.vocab, run.answers, vqa.max_question_length)
    started = time.perf_counter()
    predictions = answer_records(
        answerer, records, vqa.questions_per_image, batch_size, skipped.unreadable, f"images of the {split} split"
    )
    seconds = time.perf_counter() - started
    records, predictions = (
        [r for r, p in zip(records, predictions) if p is not None],
        [p for p in predictions if p is not None],
    )
    if train_records is None:
        train_records = load_qa_split(
            dataset or data.dataset,
            data_dir or data.data_dir,
            run.config.train.train_split,
            answer_type=vqa.answer_type,
        )
    result = {
        # a split by question shares photos with train; the truth and the thing asked about show where a yes/no model
        # errs
        **accuracy_table(
            records,
            predictions,
            {
                **train_overlap(train_records, records),
                "by_truth": [r.answer for r in records],
                "by_subject": [question_subject(r.question) or "(other questions)" for r in records],
            },
        ),
        "split": split,
        "images": len({r.image for r in records}),
        "answer_coverage": run.answers.coverage(r.answer for r in records),
        "blind_baselines": blind_baselines(train_records, records),
        **(
            {
                "black_image_accuracy": accuracy_table(
                    records, answer_records(answerer, records, vqa.questions_per_image, batch_size, black=True)
                )["accuracy"]
            }
            if black_images
            else {}
        ),
        "use_image": vqa.use_image,
        "use_question": vqa.use_question,
        "seconds": seconds,
        "skipped": skipped.summary("questions"),
    }
    if out is not None:
        write_json(
            out,
            [
                {
                    "image": r.image,
                    "question": r.question,
                    "answer": a,
                    "answers": list(r.answers),
                    "question_type": r.question_type,
                }
                for r, a in zip(records, predictions)
            ],
        )
    if not run.shipped:
        update_metrics(run.path, {f"eval_{split}": result})
    return result


SUBJECTS_SHOWN = 20  # evaluate's lines per thing asked about ("is there a dog ?"); metrics.json keeps them all


def vqa_summary_lines(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for the CLI."""
    ablation = {
        (True, True): "",
        (False, True): " (question-only model: the image takes no part)",
        (True, False): " (image-only model: the question takes no part)",
    }[result["use_image"], result.get("use_question", True)]
    lines = [
        f"{result['split']} ({result['questions']} questions on {result['images']} images): VQA accuracy "
        f"{result['accuracy']:.2%}"
        f" +- {result.get('interval_95', 0.0):.2%} (95%)" + ablation,
        f"answers in the answer vocabulary: {result['answer_coverage']:.1%} (the ceiling)",
    ]
    for title, key in (
        ("answer type", "by_answer_type"),
        ("question type", "by_question_type"),
        ("photo", "by_photo"),
        ("photo and question text", "by_photo_and_question"),
        ("true answer", "by_truth"),
        (f"thing asked about (the {SUBJECTS_SHOWN} most asked)", "by_subject"),
    ):
        if key not in result:  # written before captioner had it
            continue
        groups = result[key].items()
        if key == "by_truth" and len(groups) > SUBJECTS_SHOWN:  # open answers: the answer types say it already
            continue
        if key == "by_subject":
            groups = sorted(
                ((name, g) for name, g in groups if name != "(other questions)"), key=lambda item: -item[1]["questions"]
            )[:SUBJECTS_SHOWN]
        lines.append(f"by {title}:")
        width = max([16, *(len(name) for name, _ in groups)])
        lines += [f"  {name:<{width}} {g['accuracy']:7.2%}  ({g['questions']} questions)" for name, g in groups]
    if "black_image_accuracy" in result:
        black = result["black_image_accuracy"]
        lines.append(
            f"the same model with every image black: {black:.2%} (the image is worth "
            f"{100 * (result['accuracy'] - black):.1f} points)"
        )
    blind = result["blind_baselines"]
    lines.append(
        f"blind baselines: always 'yes' {blind['always_yes']:.2%}, most frequent answer {blind['most_frequent']:.2%}, "
        f"most frequent answer to the same question text {blind['question_prior']:.2%}"
        + (f", to any question about the same photo {blind['photo_prior']:.2%}" if "photo_prior" in blind else "")
    )
    return lines


def read_hypotheses(path: str | Path) -> dict[str, str]:
    """Generated captions keyed by image file name, from `{image: caption}` or the list `evaluate --out` writes."""
    payload = _read_json(path)
    if isinstance(payload, dict) and all(isinstance(v, str) for v in payload.values()):
        return {Path(k).name: v for k, v in payload.items()}
    if isinstance(payload, list) and all(
        isinstance(x, dict) and isinstance(x.get("caption"), str) and "image" in x for x in payload
    ):
        return {Path(str(x["image"])).name: x["caption"] for x in payload}
    raise CaptionerError(f'{path}: expected {{image: caption}} or a list of {{"image", "caption"}} objects')


def read_references(path: str | Path) -> dict[str, list[str]]:
    """Reference captions keyed by image file name, from `{image: [captions]}` or `evaluate --out`'s list."""
    payload = _read_json(path)
    if isinstance(payload, dict) and all(isinstance(v, list) for v in payload.values()):
        return {Path(k).name: [str(c) for c in v] for k, v in payload.items()}
    if isinstance(payload, list) and all(
        isinstance(x, dict) and isinstance(x.get("references"), list) and "image" in x for x in payload
    ):
        return {Path(str(x["image"])).name: [str(c) for c in x["references"]] for x in payload}
    raise CaptionerError(f'{path}: expected {{image: [captions]}} or a list of {{"image", "references"}} objects')


def _read_json(path: str | Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CaptionerError(f"{path} does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CaptionerError(f"{path} is not valid JSON ({exc.__class__.__name__})") from None


def score_captions(
    references: dict[str, list[str]],
    hypotheses: dict[str, str] | None,
    tokenization: str = "words",
    meteor: bool = True,
) -> dict[str, Any]:
    """nltk corpus BLEU-1..4 and the pycocoevalcap metrics of `hypotheses` against `references` (matched by image
    name); with hypotheses None, the human agreement (caption #0 against the others)."""
    if hypotheses is None:
        return human_agreement(list(references.values()), tokenization=tokenization, meteor=meteor)
    missing = sorted(set(hypotheses) - set(references))
    if missing:
        raise CaptionerError(f"{len(missing)} captioned image(s) have no references (first: {missing[0]})")
    names = sorted(hypotheses)
    result = text_scores([references[n] for n in names], [hypotheses[n] for n in names], tokenization, meteor)
    return {**result, "unscored_reference_images": len(set(references) - set(hypotheses))}


def score_lines(result: dict[str, Any]) -> list[str]:
    """Fractions and x100, as papers print them."""
    lines = [
        f"{result['images']} images, tokenization: {result['tokenization']} ({TOKENIZATIONS[result['tokenization']]})"
    ]
    nltk = result["nltk"]
    lines.append(
        "nltk corpus BLEU-1..4:  "
        + " / ".join(f"{nltk[f'bleu{n}']:.4f}" for n in range(1, 5))
        + "   (x100: "
        + " / ".join(f"{100 * nltk[f'bleu{n}']:.1f}" for n in range(1, 5))
        + ")"
    )
    coco = result.get("coco")
    if coco is None:
        lines.append("COCO metrics: unavailable (pip install -e '.[coco]' for pycocoevalcap)")
        return lines
    lines.append(
        "pycocoevalcap BLEU-1..4: "
        + " / ".join(f"{coco[f'bleu{n}']:.4f}" for n in range(1, 5))
        + "   (x100: "
        + " / ".join(f"{100 * coco[f'bleu{n}']:.1f}" for n in range(1, 5))
        + ")"
    )
    meteor = (
        "unavailable (needs a Java runtime)"
        if coco["meteor"] is None
        else f"{coco['meteor']:.4f} (x100: {100 * coco['meteor']:.1f})"
    )
    lines.append(
        f"METEOR {meteor}; ROUGE-L {coco['rouge_l']:.4f} (x100: {100 * coco['rouge_l']:.1f}); "
        f"CIDEr {coco['cider']:.4f} (x100: {100 * coco['cider']:.1f})"
    )
    return lines
