"""Training survives kill -9: the same command again resumes from the mid-epoch backup."""

import json
import signal
import subprocess
import sys
import time

import pytest

from captioner.cli import main

EPOCHS, STEPS_PER_EPOCH = 12, 8  # 32 training images, batch 4


def _command(data, run):
    return [
        sys.executable,
        "-m",
        "captioner.cli",
        "train",
        "--preset",
        "tiny",
        "--data-dir",
        str(data),
        "--run",
        str(run),
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "4",
        "--set",
        "train.backup_every_steps=2",
        "--set",
        "train.val_split=train",
        "--set",
        f"train.patience={EPOCHS}",
        "--quiet",
    ]


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
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)  # a second terminal, the same command
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"is being trained by process {process.pid} " in second.stderr
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode


@pytest.mark.slow  # CI time: the suite runs twice (TensorFlow, JAX) within 10 minutes
def test_kill_minus_nine_then_resume(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert _kill_after_two_epochs(_command(tiny_data, run), run) == -signal.SIGKILL
    assert (
        json.loads((run / "metrics.json").read_text() if (run / "metrics.json").exists() else "{}").get("status")
        != "finished"
    )

    done = subprocess.run(_command(tiny_data, run), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run / "metrics.json").read_text())["train"]
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == EPOCHS  # every planned epoch, none twice
    planned = EPOCHS * STEPS_PER_EPOCH
    # Resumed from the backup's iteration count: at most one partial epoch is repeated.
    assert planned <= metrics["optimizer_iterations"] <= planned + STEPS_PER_EPOCH
    # kept: the run can be extended
    assert json.loads((run / "backup" / "training_metadata.json").read_text())["epoch"] == EPOCHS
    assert not list(run.glob(".*.tmp*"))  # temporaries of writes the kill interrupted are cleaned up

    uninterrupted = tmp_path / "uninterrupted"
    assert subprocess.run(_command(tiny_data, uninterrupted), capture_output=True, timeout=600).returncode == 0
    clean = json.loads((uninterrupted / "metrics.json").read_text())["train"]
    assert metrics["best_val_loss"] == pytest.approx(clean["best_val_loss"], rel=0.25)


def _tiny(data, run, *extra):
    return ["train", "--preset", "tiny", "--data-dir", str(data), "--run", str(run), "--quiet", *extra]


@pytest.mark.slow  # CI time: the suite runs twice (TensorFlow, JAX) within 10 minutes
def test_a_finished_run_is_extended_by_more_epochs_and_refuses_other_changes(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_tiny(tiny_data, run, "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(_tiny(tiny_data, run, "--epochs", "1")) == 0  # the same command: nothing to do
    assert "is finished" in capsys.readouterr().out

    before = {
        name: (run / name).read_bytes() for name in ("model.keras", "config.json", "history.json", "manifest.json")
    }
    assert main(_tiny(tiny_data, run, "--epochs", "2", "--learning-rate", "0.5", "--set", "model.hidden_dim=8")) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and "model.hidden_dim (32 -> 8)" in err
        and "train.learning_rate (0.01 -> 0.5)" in err
    )
    assert "--restart" in err
    assert {name: (run / name).read_bytes() for name in before} == before  # refused: nothing touched

    assert main(_tiny(tiny_data, run, "--epochs", "3", "--set", "train.patience=7")) == 0
    err = capsys.readouterr().err
    assert "extending from 1 to 3 epochs" in err and "train.patience 5 -> 7" in err
    history = json.loads((run / "history.json").read_text())
    # two more epochs, from where it stopped
    assert len(history["loss"]) == 3 and history["loss"][2] < history["loss"][0]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 3 and config["train"]["patience"] == 7
    # still loads (manifest true)
    assert main(["caption", "--run", str(run), str(next((tiny_data / "images").glob("test_*.png")))]) == 0
    capsys.readouterr()
    assert main(_tiny(tiny_data, run, "--epochs", "3", "--set", "train.patience=7")) == 0
    assert "is finished (3 epochs" in capsys.readouterr().out

    assert main(_tiny(tiny_data, run, "--epochs", "1", "--restart")) == 0
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 1


def test_a_run_named_from_another_folder_is_the_same_run(tiny_data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(_tiny(tiny_data, run, "--epochs", "1")) == 0
    monkeypatch.chdir(tiny_data)  # data dir "." is the same folder as the absolute path
    capsys.readouterr()
    assert main(_tiny(".", run, "--epochs", "1")) == 0
    assert "is finished" in capsys.readouterr().out
