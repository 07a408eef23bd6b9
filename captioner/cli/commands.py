"""The command handlers: each `run_<command>(args)` turns parsed flags into a config or a request, calls the package,
and prints. Errors the user can fix are `CaptionerError`s, which `captioner.cli.main` prints as one line."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.cli.parser import CAPTION, DECODE_FLAGS, VQA, config_keys
from captioner.errors import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL

if TYPE_CHECKING:  # the handlers import TensorFlow-bound modules lazily, so that `--help` is fast
    from captioner.data import Skipped


def fast_path(args: argparse.Namespace) -> bool:
    """Whether `caption` or `ask` runs the shipped model on the fast path (captioner.generation.lite): no run named,
    --engine auto or litert, and nothing asked that only the Keras path does (sampling, another precision)."""
    from captioner.pretrained import is_pretrained

    if args.command not in ("caption", "ask") or not is_pretrained(args.run) or args.engine == "keras":
        return False
    if args.engine == "litert":
        return True
    if args.precision is not None or getattr(args, "sampler", None) == "sampling":
        return False
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        return False
    return True


def parallel_config(args: argparse.Namespace):
    """The command's data parallelism, resolved once (flags, else the KERAS_DISTRIBUTION_* variables)."""
    from captioner.distribute import resolve

    return resolve(args.devices, args.coordinator, args.num_processes, args.process_id, args.join_timeout)


def _configure(args: argparse.Namespace, preset_name: str, flags: dict[str, str], fixed: dict[str, str]):
    """A preset (or, with --init-from, the source run's settings) with the command line's flags, then its --set
    values, applied as typed overrides."""
    from captioner.config import apply_overrides, preset, started_from
    from captioner.errors import CaptionerError
    from captioner.run import load_config

    try:
        if getattr(args, "init_from", None):
            source, path = load_config(args.init_from), str(Path(args.init_from).resolve())
            if getattr(args, "objective", None) == "scst":
                from captioner import scst

                config = scst.started_from(source, path)
            else:
                config = started_from(source, path)
        else:
            config = preset(preset_name)
        overrides = {key: str(getattr(args, flag)) for flag, key in flags.items() if getattr(args, flag) is not None}
        overrides.update(fixed)
        if getattr(args, "add_source", None):
            if any("," in source for source in args.add_source):
                raise CaptionerError(
                    "--add-source: a folder name with a comma cannot be stored; rename or link the folder"
                )
            overrides["data.more_sources"] = ",".join(args.add_source)
        if getattr(args, "source_weights", None) is not None:
            overrides["data.source_weights"] = args.source_weights
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise CaptionerError(f"--set expects SECTION.FIELD=VALUE, got '{item}'")
            overrides[key.strip()] = value.strip()
        return apply_overrides(config, overrides)
    except ValueError as exc:
        raise CaptionerError(str(exc)) from None


def progress_verbosity(quiet: bool) -> int:
    """Keras's verbosity for training and feature extraction: a progress bar redrawn in place on a terminal, one plain
    line per epoch (or per extraction) into a file or a pipe, where a redrawn bar is hundreds of escape codes."""
    return 0 if quiet else 1 if sys.stdout.isatty() else 2


def _report_skipped(skipped: Skipped, what: str, verbose: bool) -> None:
    """One line on stderr for what a loader skipped; every entry with --verbose."""
    if not skipped.count():
        return
    print(f"captioner: {skipped.summary(what)}" + ("" if verbose else " (--verbose lists them)"), file=sys.stderr)
    if verbose:
        for line in skipped.details():
            print(f"  {line}", file=sys.stderr)


def _log(line: str) -> None:
    print(line, flush=True)


def _notify(line: str) -> None:
    print(f"captioner: {line}", file=sys.stderr, flush=True)


def _report_training(metrics: dict, run: str, item_name: str) -> int:
    stats = metrics["train"]
    monitor = stats.get("monitor", "val_loss")
    best = f"best {monitor.replace('_', ' ')} {stats[f'best_{monitor}']:.4f}"
    if metrics.get("already_finished"):
        print(f"run {run} is finished ({stats['epochs_run']} epochs, {best}); pass --restart to train it again")
        return EXIT_OK
    print(
        f"trained {stats['epochs_run']} epochs in {stats['seconds']:.0f}s "
        f"({stats['images_per_second']:.0f} images/s, {stats[f'{item_name}_per_second']:.0f} {item_name}/s, "
        f"peak memory {stats['peak_rss_mib']:.0f} MiB); {best} at epoch {stats['best_epoch']}"
        f"{' (the starting weights: no epoch beat them)' if stats['best_epoch'] == 0 else ''}; run saved to {run}"
    )
    return EXIT_OK


def _start(config):
    """Start the command's data parallelism; a process of a several-process job says when the job has formed."""
    from captioner.distribute import start

    parallel = start(config)
    if parallel.processes > 1:
        _notify(
            f"joined the job at {config.coordinator} as process {config.process_id} of {config.num_processes} "
            f"({parallel.replicas} devices in all)"
        )
    return parallel


def run_train(args: argparse.Namespace) -> int:
    from captioner.errors import CaptionerError

    if args.init_from and args.preset:
        raise CaptionerError("--init-from takes its settings from that run; drop --preset")
    if args.attention and args.decoder is None and not args.init_from:
        args.decoder = "attention"
    config = _configure(args, args.preset or "shapes", config_keys(CAPTION), {})
    config.task = "caption"  # also where --init-from names a VQA run: train then says it cannot start from one
    return _train_and_report(args, config, "entries", "captions")


def run_train_vqa(args: argparse.Namespace) -> int:
    from captioner.errors import CaptionerError

    if args.init_from and args.preset:
        raise CaptionerError("--init-from takes its settings from that run; drop --preset")
    if args.encoder_from and (args.encoder or args.encoder_weights):
        raise CaptionerError("--encoder-from takes the encoder from that run; drop --encoder/--encoder-weights")
    if args.question_only and args.image_only:
        raise CaptionerError("--question-only and --image-only leave the model nothing to read; pass one of them")
    name = args.preset or {"easy-vqa": "easy-vqa", "vqa-lines": "vqa-coco"}.get(args.dataset, "shapes-vqa")
    fixed = {"task": "vqa"}
    if args.attention:
        fixed["vqa.attention"] = "true"
    if args.question_only:
        fixed["vqa.use_image"] = "false"
    if args.image_only:
        fixed["vqa.use_question"] = "false"
    config = _configure(args, name, config_keys(VQA), {k: v for k, v in fixed.items() if k != "task"})
    config.task = "vqa"
    return _train_and_report(args, config, "questions", "questions")


def _train_and_report(args: argparse.Namespace, config, skipped_what: str, item_name: str) -> int:
    """Train `config` into `args.run` on the command's data parallelism; process 0 reports what was skipped and the
    training's one-line summary."""
    from captioner.data import Skipped
    from captioner.train import train

    parallel = _start(args.parallel)
    skipped = Skipped()
    metrics = train(
        config,
        args.run,
        verbose=progress_verbosity(args.quiet),
        restart=args.restart,
        skipped=skipped,
        notify=_notify,
        log=_log,
        parallel=parallel,
    )
    if not parallel.writer:  # process 0 reports
        return EXIT_OK
    _report_skipped(skipped, skipped_what, args.verbose)
    return _report_training(metrics, args.run, item_name)


def expand_image_arguments(arguments: Sequence[str]) -> list[str]:
    """Files as given; folders become their image files (sorted); glob patterns are expanded.

    A pattern that matches nothing is kept as is, so it is reported as a missing file.
    """
    from captioner.data.images import IMAGE_SUFFIXES

    paths: list[str] = []
    for argument in arguments:
        if Path(argument).is_dir():
            paths += sorted(str(p) for p in Path(argument).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in argument for ch in "*?[") and not Path(argument).exists():
            paths += sorted(glob.glob(argument)) or [argument]
        else:
            paths.append(argument)
    return paths


def _given_decode(decode, args: argparse.Namespace):
    """The run's DecodeConfig with the flags given on the command line. `--beam-size` alone keeps its old meaning: 1 is
    greedy, more is beam search."""
    given = {name: getattr(args, name) for name in DECODE_FLAGS if getattr(args, name, None) is not None}
    if "beam_size" in given and "sampler" not in given:
        given["sampler"] = "auto"
    return dataclasses.replace(decode, **given)


def decode_from_args(decode, args: argparse.Namespace):
    """`_given_decode`, checked now (a bad combination is one line, before any image is read)."""
    from captioner.generation.decoding import sampler_name

    decode = _given_decode(decode, args)
    sampler_name(decode)
    return decode


def run_caption(args: argparse.Namespace) -> int:
    from captioner.errors import CaptionerError

    paths = expand_image_arguments(args.images)
    if not paths:
        raise CaptionerError("no image files found in the given folders")
    if args.attention is not None:
        _check_output_folder(args.attention)
    if args.fast:
        from captioner.generation.lite import LiteCaptioner, LiteEncoder, check_decode
        from captioner.pretrained import ENCODER_FILE, verified

        folder = verified("caption")
        captioner = LiteCaptioner(folder, LiteEncoder(folder.parent / ENCODER_FILE))
        decode = _given_decode(captioner.config.decode, args)
        check_decode(decode)
        results = captioner.caption_files(paths, decode, args.attention)
    else:
        from captioner.run import load_run
        from captioner.tasks.caption import caption_files

        run = load_run(args.run, precision=args.precision)
        results = caption_files(run, paths, decode_from_args(run.config.decode, args), args.batch_size, args.attention)
    return _print_per_image(
        results, args.json, "captioned", lambda r: r["caption"] if len(paths) == 1 else f"{r['image']}\t{r['caption']}"
    )


def _print_per_image(results: list[dict], as_json: bool, verb: str, line) -> int:
    """Every image's result (`line(result)`, or the JSON list), its error on stderr, and the exit code: 1 when
    some images failed and the others went through."""
    if as_json:
        print(json.dumps(results, indent=2))
    for result in results:
        if "error" in result:
            print(f"captioner: error: {result['error']}", file=sys.stderr)
        elif not as_json:
            print(line(result))
    failed = sum("error" in r for r in results)
    if failed:
        print(f"captioner: {failed} of {len(results)} images could not be {verb}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _check_output_folder(path: str) -> None:
    from captioner.errors import CaptionerError

    if not Path(path).resolve().parent.is_dir():
        raise CaptionerError(f"cannot write {path}: folder {Path(path).parent} does not exist")


def run_serve(args: argparse.Namespace) -> int:
    from captioner.errors import CaptionerError
    from captioner.run import load_run
    from captioner.serving.serve import ServeConfig, serve

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise CaptionerError('serve needs Starlette and uvicorn: pip install "captioner[serve]"') from None
    if not 0 < args.port < 65536:
        raise CaptionerError(f"--port must be between 1 and 65535, got {args.port}")
    run = load_run(args.run)
    vqa_run = args.vqa_run if args.vqa_run is not None or args.run is not None else "pretrained"
    vqa = load_run(vqa_run, task="vqa") if vqa_run and vqa_run != "none" else None
    config = ServeConfig(
        max_batch=args.max_batch, max_wait_ms=max(0.0, args.max_wait_ms), max_bytes=int(args.max_mb * 1024 * 1024)
    )
    serve(run, vqa, args.host, args.port, config, decode_from_args(run.config.decode, args))
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    from captioner.run import load_run, stored_task
    from captioner.serving.export import export_run

    # float32 whatever the run trained at (its variables are float32): what TFLite converts and every server runs
    run = load_run(args.run, task=stored_task(args.run), precision="float32")
    if args.format == "pretrained":
        from captioner.errors import CaptionerError
        from captioner.serving.export import export_pretrained

        if args.vqa_run is None:
            raise CaptionerError("--format pretrained ships a caption run and a VQA run: add --vqa-run")
        vqa = load_run(args.vqa_run, task="vqa", precision="float32")
        out = export_pretrained(run, vqa, args.out, decode_from_args(run.config.decode, args))
        print(f"wrote {out}: encoder.tflite, caption/ and vqa/ (config, vocabulary, float16 weights), manifest.json")
        return EXIT_OK
    if args.format == "tflite":
        from captioner.serving.export import export_tflite

        out = export_tflite(run, args.out, args.hard_context or run.config.decode.hard_context)
        print(
            f"wrote {out}: encoder.tflite, step.tflite and tflite.json (greedy decoding; "
            f"captioner.serving.export.tflite_greedy is the loop)"
        )
        return EXIT_OK
    out = export_run(run, args.out, decode_from_args(run.config.decode, args))
    if run.config.task == "vqa":
        print(
            f"wrote {out}: signature serving_default, images (encoded bytes) + questions -> answers, top_answers, "
            f"top_probabilities"
        )
    else:
        print(f"wrote {out}: signature serving_default, images (encoded bytes) -> captions, tokens, scores")
    return EXIT_OK


def run_classify(args: argparse.Namespace) -> int:
    import numpy as np

    from captioner.data.images import read_image
    from captioner.errors import CaptionerError
    from captioner.models.encoder import build_classifier, read_class_index

    paths = expand_image_arguments(args.images)
    beside = Path(args.weights).with_name("imagenet_class_index.json")
    index_path = args.class_index or (str(beside) if beside.is_file() else None)
    names = read_class_index(index_path) if index_path else None
    model, preprocess, size = build_classifier(args.encoder, args.weights)
    results: list[dict] = [{"image": path} for path in paths]
    for start in range(0, len(paths), 32):  # one CNN call per batch of readable images
        chunk: list[tuple[int, np.ndarray]] = []
        for index in range(start, min(start + 32, len(paths))):
            try:
                chunk.append((index, read_image(paths[index], size)[0]))
            except CaptionerError as exc:
                results[index]["error"] = str(exc)
        if not chunk:
            continue
        images = np.stack([image for _, image in chunk]).astype("float32")  # (batch, size, size, 3)
        probabilities = np.asarray(model(preprocess(images), training=False))  # (batch, 1000)
        for (index, _), row in zip(chunk, probabilities):
            results[index]["classes"] = [
                {
                    "id": int(i),
                    "name": names[i] if names and i < len(names) else f"class {i}",
                    "probability": float(row[i]),
                }
                for i in np.argsort(-row)[: args.top]
            ]
    return _print_per_image(
        results,
        args.json,
        "classified",
        lambda r: r["image"] + "\t" + ", ".join(f"{c['name']} {c['probability']:.2f}" for c in r["classes"]),
    )


def run_plot_history(args: argparse.Namespace) -> int:
    from captioner.errors import CaptionerError
    from captioner.run import HISTORY_FILE, read_json
    from captioner.viz import history_figure

    history = read_json(Path(args.run) / HISTORY_FILE)
    if not history:
        raise CaptionerError(f"{args.run} has no {HISTORY_FILE}; is it a run directory written by `captioner train`?")
    out = args.out or str(Path(args.run) / "history.png")
    _check_output_folder(out)
    history_figure(history, out)
    print(f"wrote {out}")
    return EXIT_OK


def run_evaluate(args: argparse.Namespace) -> int:
    from captioner.data import Skipped
    from captioner.run import load_run, stored_task
    from captioner.tasks import EvalOptions, get_task

    if args.out is not None:
        _check_output_folder(args.out)
    skipped = Skipped()
    task = get_task(stored_task(args.run))
    run = load_run(args.run, task=task.name, precision=args.precision)
    decode = decode_from_args(run.config.decode, args) if run.config.task == "caption" else None
    options = EvalOptions(
        args.split,
        args.data_dir,
        args.batch_size,
        args.out,
        args.max_images,
        decode,
        args.meteor,
        args.dataset,
        args.black_images,
    )
    result = task.evaluate(run, options, skipped)
    _report_skipped(skipped, task.skipped_item, args.verbose)
    print(json.dumps(result, indent=2) if args.json else "\n".join(task.summary_lines(result)))
    return EXIT_OK


def run_score(args: argparse.Namespace) -> int:
    from captioner.data import Skipped, load_split
    from captioner.errors import CaptionerError
    from captioner.evaluation.evaluate import read_hypotheses, read_references, score_captions, score_lines

    hypotheses = read_hypotheses(args.hypotheses) if args.hypotheses else None
    if args.references:
        references = read_references(args.references)
    elif args.dataset:
        if not args.data_dir:
            raise CaptionerError("--dataset needs --data-dir")
        skipped = Skipped()
        references = {
            r.image_id: list(r.captions) for r in load_split(args.dataset, args.data_dir, args.split, skipped)
        }
        _report_skipped(skipped, "entries", args.verbose)
    elif args.hypotheses:
        references = read_references(args.hypotheses)
    else:
        raise CaptionerError("--human needs --references FILE or --dataset NAME --data-dir DIR")
    if args.images:
        try:
            keep = {
                Path(line.strip()).name
                for line in Path(args.images).read_text(encoding="utf-8").splitlines()
                if line.strip()
            }
        except OSError as exc:
            raise CaptionerError(f"cannot read {args.images}: {exc.strerror}") from None
        references = {name: refs for name, refs in references.items() if name in keep}
        if hypotheses is not None:
            hypotheses = {name: c for name, c in hypotheses.items() if name in keep}
    if not references or hypotheses == {}:
        raise CaptionerError("nothing to score: no image has both references and a caption")
    result = score_captions(references, hypotheses, args.tokenization, meteor=not args.no_meteor)
    print(json.dumps(result, indent=2) if args.json else "\n".join(score_lines(result)))
    return EXIT_OK


def _shard(text: str | None) -> tuple[int, int]:
    """`--shard I/N` as (I, N), 1 <= I <= N; (1, 1) when not given."""
    from captioner.errors import CaptionerError

    if text is None:
        return 1, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index = count = 0
    if not 1 <= index <= count:
        raise CaptionerError(
            f"--shard takes I/N with 1 <= I <= N, e.g. 1/4 for the first of four workers (got '{text}')"
        )
    return index, count


def run_features(args: argparse.Namespace) -> int:
    from captioner.data import Skipped
    from captioner.tasks.caption import extract_features

    skipped = Skipped()
    weights = None if args.encoder_weights.lower() == "none" else args.encoder_weights
    done = extract_features(
        args.dataset,
        args.data_dir,
        args.splits.split(","),
        args.encoder,
        weights,
        args.cache_dir,
        args.batch_size,
        args.precision,
        args.seed,
        skipped,
        args.fine_tune_blocks,
        _shard(args.shard),
        verbose=progress_verbosity(False),
    )
    _report_skipped(skipped, "entries", args.verbose)
    rate = f" ({done['computed'] / done['seconds']:.1f} images/s)" if done["computed"] else ""
    share = f" (shard {args.shard})" if args.shard else ""
    print(
        f"{done['computed']} of {done['images']} images{share} computed in {done['seconds']:.0f}s{rate}, the rest were "
        f"cached; "
        f"features in {done['folder']}"
    )
    return EXIT_OK if "unreadable image" not in skipped.reasons else EXIT_PARTIAL


def run_ask(args: argparse.Namespace) -> int:
    if args.fast:
        from captioner.generation.lite import LiteAnswerer, LiteEncoder
        from captioner.pretrained import ENCODER_FILE, verified

        folder = verified("vqa")
        answered = LiteAnswerer(folder, LiteEncoder(folder.parent / ENCODER_FILE)).ask(
            args.image, args.questions, args.top
        )
    else:
        from captioner.run import load_run
        from captioner.tasks.vqa import ask

        run = load_run(args.run, task="vqa", precision=args.precision)
        answered = ask(run, args.image, args.questions, args.top)
    results = answered["answers"]
    for result in results:
        for key in ("error", "warning"):
            if key in result:
                print(f"captioner: {key}: {result[key]}", file=sys.stderr)
    answerable = [r for r in results if "error" not in r]
    if args.json:
        print(json.dumps(answered, indent=2))
    else:
        for result in answerable:
            if len(args.questions) > 1:
                print(result["question"])
            print(result["answer"])
            for item in result["top"]:
                print(f"  {item['probability']:6.1%}  {item['answer']}")
    if len(answerable) < len(results):
        return EXIT_PARTIAL if answerable else EXIT_ERROR
    return EXIT_OK


def run_questions(args: argparse.Namespace) -> int:
    """Each split's questions from its own photos' captions, all checked before a file is written."""
    from captioner.data import Skipped, load_split
    from captioner.data.caption_questions import KINDS, questions_from_captions, vqa_lines
    from captioner.data.questions import LINE_SPLITS
    from captioner.errors import CaptionerError
    from captioner.fileio import write_text

    kinds = [k.strip() for k in (args.kinds or ",".join(KINDS)).split(",") if k.strip()]
    if not kinds or set(kinds) - set(KINDS):
        raise CaptionerError(f"--kinds {args.kinds}: choose from {', '.join(KINDS)}")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not splits or set(splits) - set(LINE_SPLITS):
        raise CaptionerError(f"--splits {args.splits}: choose from train, val, test")
    made, photos = {}, {}
    for split in splits:
        skipped = Skipped()
        records = load_split(args.dataset, args.data_dir, split, skipped)
        _report_skipped(skipped, f"{split} entries", args.verbose)
        generated = questions_from_captions(records, kinds, args.per_photo, seed=args.seed, phrasings=args.phrasings)
        _report_skipped(generated.skipped, f"{split} photos", args.verbose)
        made[split] = generated
        photos.update({Path(q.image).name: Path(q.image).resolve() for q in generated.questions})
    for kind in kinds:
        if not any(q.kind == kind for g in made.values() for q in g.questions):
            if args.kinds is None:  # not asked for by name: say so, make the others
                print(
                    f"captioner: no {kind} questions: no photo's captions name a {kind} concept in most of them",
                    file=sys.stderr,
                )
                continue
            raise CaptionerError(
                f"no caption of the {', '.join(splits)} split(s) supports a {kind} question (none names a "
                f"concept of that kind in most of a photo's captions); drop it from --kinds"
            )
    out = Path(args.out)
    images = out / "Images"
    folders = {path.parent for path in photos.values()}
    out.mkdir(parents=True, exist_ok=True)
    if len(folders) == 1 and (not images.exists() or images.is_symlink()):  # one folder of photos: one link to it
        if images.is_symlink():
            images.unlink()
        images.symlink_to(next(iter(folders)), target_is_directory=True)
    else:  # photos in several folders (COCO's train2014/val2014): a folder of links
        images.mkdir(exist_ok=True)
        for name, path in photos.items():
            if not (images / name).exists():
                (images / name).symlink_to(path)
    for split, generated in made.items():
        path = out / f"{args.name}.{LINE_SPLITS[split]}Images.txt"
        write_text(path, vqa_lines(generated.questions))
        counts = ", ".join(f"{n} {what}" for what, n in generated.counts().items())
        print(
            f"{split}: {len(generated.questions)} questions about {len({q.image for q in generated.questions})} photos "
            f"({counts}) -> {path}"
        )
    print(f"train on them: captioner train-vqa --dataset vqa-lines --data-dir {out} ...")
    return EXIT_OK


def run_data(args: argparse.Namespace) -> int:
    import time

    from captioner.data.shapes import ShapesSpec, generate
    from captioner.errors import CaptionerError

    for name in ("train", "val", "test"):
        if getattr(args, name) < 0:
            raise CaptionerError(f"--{name} must not be negative")
    started = time.perf_counter()
    spec = ShapesSpec(
        image_size=args.image_size, num_train=args.train, num_val=args.val, num_test=args.test, seed=args.seed
    )
    sizes = generate(args.out, spec)
    counts = ", ".join(f"{n} {split}" for split, n in sizes.items())
    print(f"wrote shapes ({counts} images) to {args.out} in {time.perf_counter() - started:.1f}s")
    return EXIT_OK


COMMANDS = {
    "data": run_data,
    "questions": run_questions,
    "train": run_train,
    "train-vqa": run_train_vqa,
    "caption": run_caption,
    "ask": run_ask,
    "score": run_score,
    "features": run_features,
    "evaluate": run_evaluate,
    "plot-history": run_plot_history,
    "classify": run_classify,
    "export": run_export,
    "serve": run_serve,
}
