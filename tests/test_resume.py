"""Training survives kill -9: the same command again resumes from the mid-epoch backup."""

import json
import signal
import subprocess
import sys
import time

import pytest

from captioner.cli import main

EPOCHS, STEPS_PER_EPOCH = 30, 8  # 32 training images, batch 4


def _command(data, run):
    return [sys.executable, "-m", "captioner.cli", "train", "--preset", "tiny", "--data-dir", str(data), "--run", str(run),
            "--epochs", str(EPOCHS), "--batch-size", "4", "--set", "train.backup_every_steps=2",
            "--set", "train.val_split=train", "--set", f"train.patience={EPOCHS}", "--quiet"]


def _kill_after_two_epochs(command, run):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metadata = run / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(metadata.read_text())["epoch"] >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode


def test_kill_minus_nine_then_resume(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert _kill_after_two_epochs(_command(tiny_data, run), run) == -signal.SIGKILL
    assert json.loads((run / "metrics.json").read_text() if (run / "metrics.json").exists() else "{}").get("status") != "finished"

    done = subprocess.run(_command(tiny_data, run), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run / "metrics.json").read_text())["train"]
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == EPOCHS  # every planned epoch, none twice
    planned = EPOCHS * STEPS_PER_EPOCH
    # Resumed from the backup's iteration count: at most one partial epoch is repeated.
    assert planned <= metrics["optimizer_iterations"] <= planned + STEPS_PER_EPOCH
    assert not (run / "backup").exists()
    assert not list(run.glob(".*.tmp*"))  # temporaries of writes the kill interrupted are cleaned up

    uninterrupted = tmp_path / "uninterrupted"
    assert subprocess.run(_command(tiny_data, uninterrupted), capture_output=True, timeout=600).returncode == 0
    clean = json.loads((uninterrupted / "metrics.json").read_text())["train"]
    assert metrics["best_val_loss"] == pytest.approx(clean["best_val_loss"], rel=0.25)


def test_a_finished_run_says_so_and_restart_starts_over(overfit_run, tiny_data, tmp_path, capsys):
    import shutil

    run = tmp_path / "done"
    shutil.copytree(overfit_run, run)
    assert main(["train", "--preset", "tiny", "--data-dir", str(tiny_data), "--run", str(run), "--quiet"]) == 0
    assert "is finished" in capsys.readouterr().out
    args = ["train", "--preset", "tiny", "--data-dir", str(tiny_data), "--run", str(run), "--epochs", "1", "--restart", "--quiet"]
    assert main(args) == 0
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 1
