"""`captioner data | questions | features | classify | train | train-vqa | caption | ask | plot-history | evaluate |
score | export | serve`: the only package that reads argv or prints. Three parts: `parser` (the flags), `commands`
(the handlers), `main` here (dispatch, the one-line errors); jobs of several processes are `captioner.supervise`.

Errors the user can fix print one line (`captioner: error: ...`) and exit 2; `caption` exits 1 when some
images failed and the rest were captioned.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from captioner.cli.commands import COMMANDS, expand_image_arguments, fast_path, parallel_config
from captioner.cli.parser import build_parser
from captioner.errors import EXIT_ERROR
from captioner.supervise import (
    JOB_BROKEN,
    JOB_CHILD_ENV,
    die_with_supervisor,
    job_stopped,
    supervise,
    without_gloo_notices,
)

__all__ = ["COMMANDS", "build_parser", "expand_image_arguments", "main", "without_gloo_notices"]

NO_TENSORFLOW = ("data", "questions")  # commands that never import TensorFlow (nor do --help and usage errors)


TF_DATA = (
    "train",
    "train-vqa",
    "evaluate",
    "features",
    "export",
)  # need TensorFlow on every backend (tf.data, SavedModel);


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from captioner.errors import CaptionerError

    if args.command in ("train", "train-vqa"):  # a run another process is training: say so before the slow imports
        from captioner.distribute import prepare
        from captioner.fileio import busy_message, lock_holder

        try:
            args.parallel = parallel_config(args)
        except CaptionerError as exc:
            print(f"captioner: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        if args.parallel.num_processes > 1 and not os.environ.get(JOB_CHILD_ENV):
            return supervise(argv, args.parallel)
        if os.environ.get(JOB_CHILD_ENV):
            die_with_supervisor(int(os.environ[JOB_CHILD_ENV]))
        prepare(args.parallel)  # before JAX starts
        holder = lock_holder(args.run) if args.parallel.process_id == 0 else None  # the others train in a private copy
        if holder:
            print(f"captioner: error: {busy_message(args.run, holder)}", file=sys.stderr)
            return EXIT_ERROR
    from captioner.config import AUTO_PRECISION_ENV, PRECISIONS

    forced = os.environ.get(AUTO_PRECISION_ENV, "").strip()
    if forced and forced not in PRECISIONS:  # checked once here, before anything resolves "auto"
        print(
            f"captioner: error: {AUTO_PRECISION_ENV}={forced} is not a precision; unset it or use one of: "
            f"{', '.join(PRECISIONS)}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    try:
        args.fast = fast_path(args)
    except CaptionerError as exc:
        print(f"captioner: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.command not in NO_TENSORFLOW and not args.fast and "tensorflow" not in sys.modules:
        if getattr(args, "verbose", False) or os.environ.get("CAPTIONER_TF_LOGS", "") not in ("", "0"):
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        else:
            from captioner.backend import filter_native_logs, import_tensorflow_quietly, name

            filter_native_logs()  # XLA and oneDNN log too, whether or not TensorFlow comes
            if args.command in TF_DATA or name() == "tensorflow":  # JAX's caption/ask: ~5 s less
                import_tensorflow_quietly()
    try:
        return COMMANDS[args.command](args)
    except CaptionerError as exc:
        print(f"captioner: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr, flush=True)
        if os.environ.get(JOB_CHILD_ENV):
            # as below: no jax.distributed shutdown, which would wait for the processes waiting for this one
            os._exit(130)
        return 130
    except Exception as exc:
        if not (os.environ.get(JOB_CHILD_ENV) and any(marker in str(exc) for marker in JOB_BROKEN)):
            raise
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        print(job_stopped(args.parallel, detail), file=sys.stderr, flush=True)
        # not a normal exit: jax.distributed's shutdown would wait ~85 s for the process that is gone
        os._exit(EXIT_ERROR)
