"""Jobs of several processes: each training process runs as the child of a supervisor that turns a native abort
(JAX's distributed runtime ending a process whose partner is gone) into one line and exit status 2."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence

from captioner.distribute import ADDRESSES_ENV
from captioner.errors import EXIT_ERROR

# the supervisor's pid, set in the training process it watches (several-process jobs)
JOB_CHILD_ENV = "CAPTIONER_JOB_CHILD"


# a fatal line of native (absl) logging: what comes after it is the dying process's stack
NATIVE_FATAL = re.compile(r"^F\d{4} ")


# "[Gloo] Rank 0 is connected to 1 peer ranks...", printed by JAX's CPU collectives
GLOO_NOTICE = re.compile(rb"\[Gloo\][^\n]*\n")


JOINED = "captioner: joined"  # the line a job's process writes once every process has joined (`_start`)


# What a collective says when another process of the job is gone: JAX's CPU collectives (Gloo), NCCL on GPUs, the
# distributed runtime itself.
JOB_BROKEN = ("Gloo", "NCCL", "distributed service")


def job_stopped(config, detail: str) -> str:
    """The one line of a job's process that stopped because another process of the job ended or cannot be reached."""
    return (
        f"captioner: error: process {config.process_id} of {config.num_processes} stopped: another process of the job "
        f"ended or could not be reached ({detail[:120]}); the last backup is kept: start every process again with the "
        f"same command to resume"
    )


def die_with_supervisor(supervisor: int) -> None:
    """A job's training process is killed when its supervisor ends, however it ends (kill -9 too): left behind, it
    would go on training, and as process 0 writing the run. SIGKILL, as JAX's distributed runtime catches SIGTERM (a
    preemption notice) and goes on. Linux only (prctl); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != supervisor:  # it was gone before the line above
        os._exit(EXIT_ERROR)


def without_gloo_notices(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The bytes of `chunks` as they come, less whole "[Gloo] ...\\n" lines, which native code may write in pieces: a
    notice not finished yet (or the start of one) is held back until its line ends."""
    marker, pending = b"[Gloo]", b""
    for chunk in chunks:
        data, pending = pending + chunk, b""
        start = data.rfind(marker)
        if start >= 0 and b"\n" not in data[start:]:
            data, pending = data[:start], data[start:]
        else:
            held = next((n for n in range(len(marker) - 1, 0, -1) if data.endswith(marker[:n])), 0)
            if held:
                data, pending = data[:-held], data[-held:]
        if data:
            yield GLOO_NOTICE.sub(b"", data)
    if pending:
        yield GLOO_NOTICE.sub(b"", pending)


def supervise(argv: Sequence[str], config) -> int:
    """Run this command again in a child process and watch it. JAX's distributed runtime ends a process with a
    native abort (a fatal log line and a C++ stack) when the coordinator cannot be reached, a process never joins,
    or another process of the job dies; the child's stderr passes through here, less that, and such an end becomes
    one line and exit status 2. (A collective that fails because a partner died is one line from the child itself:
    `main`.) The child is killed if this process ends first (`die_with_supervisor`)."""
    import subprocess
    import threading

    env = {**os.environ, JOB_CHILD_ENV: str(os.getpid())}
    child = subprocess.Popen(
        [sys.executable, "-m", "captioner.cli", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    joined, fatal = False, ""
    assert child.stderr is not None and child.stdout is not None

    def relay_stdout() -> None:  # as it comes (a progress bar redraws without a newline), less Gloo's native notices
        for chunk in without_gloo_notices(iter(lambda: os.read(child.stdout.fileno(), 1 << 16), b"")):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()

    relay = threading.Thread(target=relay_stdout, daemon=True)
    relay.start()
    try:
        for line in child.stderr:
            if line.startswith(JOINED):
                joined = True
            if fatal or NATIVE_FATAL.match(line):
                fatal = fatal or line.split("]", 1)[-1].strip()
                continue
            sys.stderr.write(line)
            sys.stderr.flush()
        status = child.wait()
        relay.join(timeout=5)
    except KeyboardInterrupt:  # Ctrl-C: the child got it too, or not (a signal to this process alone)
        # Killed, not left to end: a graceful end waits in jax.distributed's shutdown for the other processes, which
        # wait in a collective for this one (a deadlock of minutes); gone, they stop within seconds (`job_stopped`).
        child.kill()
        while child.poll() is None:
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C while it goes
                child.wait()
        print(
            "captioner: interrupted; the last backup is kept: start every process again, same command, to resume",
            file=sys.stderr,
        )
        return 130
    if status >= 0 and not fatal:
        return status
    who = f"process {config.process_id} of {config.num_processes}"
    if not joined:
        print(
            f"captioner: error: {who} could not form the job with the coordinator at {config.coordinator} within "
            f"{config.join_timeout} s; check {ADDRESSES_ENV} (process 0's HOST:PORT, reachable from every host), that "
            f"all "
            f"{config.num_processes} processes were started, or a longer --join-timeout",
            file=sys.stderr,
        )
    else:
        print(job_stopped(config, fatal), file=sys.stderr)
    return EXIT_ERROR
