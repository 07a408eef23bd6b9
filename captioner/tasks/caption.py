"""Captioning (Show-and-Tell, Show-Attend-Tell): caption vocabulary, images or cached features -> tf.data,
CaptionModel, cross-entropy over real words, beam search, BLEU and the COCO metrics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from captioner import scst
from captioner.config import DecodeConfig, ModelConfig, RunConfig
from captioner.data import DATASETS, Skipped, load_qa_split, load_split
from captioner.data.arrays import padded_caption_length
from captioner.data.images import read_image
from captioner.data.vocab import Vocabulary
from captioner.distribute import InputShard, share
from captioner.errors import CaptionerError
from captioner.evaluation.evaluate import evaluate, summary_lines
from captioner.generation.decoding import CaptionGenerator
from captioner.models.encoder import BACKBONES, default_image_size
from captioner.models.features import FeatureCache
from captioner.models.losses import TokenCrossentropy
from captioner.models.networks import build_caption_model, build_image_encoder, copy_weights, training_work
from captioner.precision import resolve_precision
from captioner.run import VOCAB_FILE, Run
from captioner.tasks import base
from captioner.tasks.base import EvalOptions, Setup, Task
from captioner.viz import attention_figure, attention_path

# --init-from: a source vocabulary missing more of the training words was trained on other captions
MAX_UNKNOWN_FROM_SOURCE = 0.25


class CaptionTask(Task):
    name = "caption"
    item_name = "captions"

    def generator(self, run: Run, decode: DecodeConfig | None = None) -> CaptionGenerator:
        """Batched captions as `decode` says (default: the run's decode settings)."""
        return CaptionGenerator(run.model, run.vocab, decode or run.config.decode)

    def evaluate(self, run: Run, options: EvalOptions, skipped: Skipped) -> dict[str, Any]:
        dataset, data_dir = base.scored_source(run.config.data, options.dataset, options.data_dir)
        return evaluate(
            run,
            options.split,
            data_dir,
            options.decode,
            options.batch_size,
            options.out,
            options.max_images,
            meteor=options.meteor,
            skipped=skipped,
            dataset=dataset,
        )

    def summary_lines(self, result: dict[str, Any]) -> list[str]:
        return summary_lines(result)

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
        from captioner.data.preprocessing import caption_dataset, feature_caption_dataset  # tf.data: training only

        data, train_cfg = config.data, config.train
        train_parts = base.source_records(
            load_split, data, train_cfg.train_split, lambda r: r[: train_cfg.max_train_images], skipped
        )
        val_parts = base.source_records(
            load_split, data, train_cfg.val_split, lambda r: r[: train_cfg.max_val_images], skipped
        )
        train_records, val_records = base.mixed(train_parts, config), base.mixed(val_parts, config, validation=True)
        distinct_train = [
            r for part in train_parts for r in part
        ]  # the vocabulary counts each caption once, whatever the weights
        image_size = default_image_size(config.model.encoder, data.image_size)
        init_from = config.train.init_from
        if resuming:  # the same command again: continue with the vocabulary the run started with
            vocab = Vocabulary.load(run_dir / VOCAB_FILE)
        elif init_from:  # the source run's vocabulary, caption length and image size (train checked they were kept)
            vocab = Vocabulary.load(Path(init_from) / VOCAB_FILE)
            unknown = vocab.unknown_rate(c for r in distinct_train for c in r.captions)
            if unknown > MAX_UNKNOWN_FROM_SOURCE:
                raise CaptionerError(
                    f"--init-from {init_from}: its vocabulary misses {unknown:.0%} of the words of these training "
                    f"captions; "
                    f"it was trained on other captions: start from a run of this dataset, or train without --init-from"
                )
            image_size = data.image_size
            config = replace(config, data=base.resolved_folders(data))
        else:
            vocab = Vocabulary.build((c for r in distinct_train for c in r.captions), min_count=data.min_word_count)
            longest = padded_caption_length(distinct_train, data.max_caption_length, data.max_length_percentile)
            data = replace(base.resolved_folders(data), image_size=image_size, max_caption_length=longest)
            config = replace(config, data=data)
        model = build_caption_model(config.model, len(vocab), image_size)
        if source is not None:
            copy_weights(source, model)
        stats: dict[str, Any] = {
            "vocab_size": len(vocab),
            "unknown_word_rate_val": vocab.unknown_rate(c for r in val_records for c in r.captions),
        }
        if len(train_parts) > 1:
            stats["sources"] = base.source_stats(config.data, train_parts, train_records, val_parts)

        if config.train.objective == "scst":
            return scst.setup(config, model, vocab, train_records, val_records, verbose, skipped, stats)
        if training_work(config) == "train_cached":
            # A frozen pretrained CNN: run it once per image (cached on disk), then train on its features.
            cache, train_records, val_records = base.cached_train_val(
                config, model.encoder, train_records, val_records, verbose, skipped, stats, shard
            )

            def batches(records, shuffle):
                # (images, num_pixels, encoder_dim) float16, read per batch
                features = cache.rows([r.image for r in records])
                return feature_caption_dataset(
                    features,
                    records,
                    vocab,
                    data.captions_per_image,
                    data.max_caption_length,
                    train_cfg.batch_size,
                    shuffle=shuffle,
                    seed=train_cfg.seed,
                    shard=shard,
                )

        else:

            def batches(records, shuffle):
                split = train_cfg.train_split if shuffle else train_cfg.val_split
                return caption_dataset(
                    records,
                    vocab,
                    image_size,
                    data.captions_per_image,
                    data.max_caption_length,
                    train_cfg.batch_size,
                    shuffle=shuffle,
                    seed=train_cfg.seed,
                    cache=data.cache_images,
                    on_error=skipped.unreadable,
                    what=f"images of the {split} split",
                    shard=shard,
                )

        return Setup(
            config=config,
            model=model,
            loss=TokenCrossentropy(ignore_class=vocab.pad_id),
            metrics=[],
            train_data=batches(train_records, True),
            val_data=batches(val_records, False),
            train_images=len(train_records),
            train_items=len(train_records) * data.captions_per_image,
            stats={"train_images": len(train_records), "val_images": len(val_records), **stats},
            vocab=vocab,
        )


def caption_files(
    run: Run,
    paths: Sequence[str],
    decode: DecodeConfig | None = None,
    batch_size: int = 64,
    attention_out: str | None = None,
) -> list[dict[str, Any]]:
    """Caption image files in batches: one dict per path, in order, with "caption", "score", "width", "height"
    (upright: EXIF orientation applied) and, with `attention_out`, "attention_map" (a PNG per image:
    `attention_out` itself for one image, `OUT-STEM_IMAGE-STEM.png` beside it for several); or "error", a
    one-line reason, for a file that cannot be read; with `decode.num_captions` > 1 also "candidates", the N best
    as {"caption", "score"}. Only `batch_size` decoded images are in memory at a time.
    """
    if attention_out is not None and not run.model.decoder.uses_attention:
        raise CaptionerError(
            f"{run.path} is a {run.config.model.decoder} run: it has no attention weights; train one with --decoder "
            f"attention"
        )
    generator = CaptionTask().generator(run, decode)
    wanted = generator.decode.num_captions
    size = run.model.encoder.image_size
    results: list[dict[str, Any]] = [{"image": path} for path in paths]
    for start in range(0, len(paths), batch_size):
        chunk: list[tuple[int, np.ndarray]] = []
        for index in range(start, min(start + batch_size, len(paths))):
            try:
                image, (width, height) = read_image(paths[index], size)
                chunk.append((index, image))
                results[index].update(width=width, height=height)
            except CaptionerError as exc:
                results[index]["error"] = str(exc)
        if not chunk:
            continue
        generated = generator(np.stack([image for _, image in chunk]))  # (batch, size, size, 3)
        candidates = generated.candidates(wanted)
        for row, ((index, image), caption, score) in enumerate(zip(chunk, generated.captions, generated.scores)):
            results[index].update(caption=caption, score=float(score))
            if wanted > 1:
                results[index]["candidates"] = [{"caption": c, "score": s} for c, s in candidates[row]]
            if attention_out is not None:
                picture = attention_path(attention_out, results[index]["image"], single=len(paths) == 1)
                draw_attention(run, image, generated.tokens[row], generated.attention[row], picture)
                results[index]["attention_map"] = str(picture)
    return results


def draw_attention(run: Run, image: np.ndarray, tokens: np.ndarray, attention: np.ndarray, path: str | Path) -> None:
    """The image with one attention map per generated word (up to `<end>`), as a PNG."""
    words = run.vocab.words_through_end(tokens)
    grid = run.model.encoder.grid_shape
    attention_figure(image, words, attention[: len(words)], (grid[0], grid[1]), path)


def extract_features(
    dataset: str,
    data_dir: str,
    splits: Sequence[str],
    encoder: str,
    weights: str | None,
    cache_dir: str | None = None,
    batch_size: int = 32,
    precision: str = "auto",
    seed: int = 0,
    skipped: Skipped | None = None,
    fine_tune_blocks: int = 0,
    shard: tuple[int, int] = (1, 1),
    verbose: int = 1,
) -> dict[str, Any]:
    """Run a frozen pretrained backbone once over the images of `splits` and store their grids in the
    feature cache that `train` reads (`cache_dir`, default DATA_DIR/features); images already there are not
    computed again. The encoder is built exactly as `train` builds a frozen one (same seed, same config path),
    so the cache key (the CNN's weights and input size) is the one training looks up. With `fine_tune_blocks` N it
    stores the activations below the top N blocks instead, what `train --fine-tune-blocks N` reads. `shard` (i, n):
    only every n-th image of the sorted list, from the i-th (workers 1..n together cover every image once; the
    cache's index is merged under a lock, so they may run at once).

    Returns:
        {"computed", "images", "seconds", "folder"}. Unreadable images are skipped and counted in `skipped`;
        when none can be read it is a CaptionerError. `verbose`: the progress bar's Keras verbosity (0, 1 or 2).
    """
    if encoder not in BACKBONES:
        raise CaptionerError(
            f"--encoder must be a pretrained backbone ({', '.join(BACKBONES)}); the small CNN trains with the decoder"
        )
    skipped = skipped if skipped is not None else Skipped()
    keras.utils.set_random_seed(seed)  # as train does before building the model, for weights None
    precision = resolve_precision(precision, "features")  # "auto" as train resolves data.feature_precision
    model_config = ModelConfig(
        encoder=encoder,
        encoder_weights=weights,
        encoder_trainable=False,
        precision=precision,
        fine_tune_blocks=fine_tune_blocks,
    )
    # the CNN computes at this precision (part of the cache key unless float32)
    image_encoder = build_image_encoder(model_config, default_image_size(encoder, 224), precision=precision)
    load = load_split if dataset in DATASETS else load_qa_split  # caption datasets, or question ones (VQA's photos)
    records = [r for split in splits if split.strip() for r in load(dataset, data_dir, split.strip(), skipped)]
    index, count = shard
    paths = share([r.image for r in records], index - 1, count)
    cache = FeatureCache(cache_dir or str(Path(data_dir) / "features"), image_encoder)
    started = time.perf_counter()
    computed = cache.extract(paths, batch_size=batch_size, verbose=verbose, on_error=skipped.unreadable)
    images = len(paths)
    if images and skipped.count("unreadable image") >= images:
        raise CaptionerError(f"none of the {images} images could be read ({skipped.reasons['unreadable image'][0]})")
    return {
        "computed": computed,
        "images": images,
        "seconds": time.perf_counter() - started,
        "folder": str(cache.folder),
    }
