"""No network at run time: the whole shapes path runs with sockets blocked."""

import socket

import pytest

from captioner.cli import main


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("captioner tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.slow  # CI time: the suite runs twice (TensorFlow, JAX) within 10 minutes
def test_data_train_evaluate_caption_without_network(no_network, tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    assert (
        main(["data", "shapes", "--out", str(data), "--train", "8", "--val", "4", "--test", "4", "--image-size", "32"])
        == 0
    )
    assert (
        main(["train", "--preset", "tiny", "--data-dir", str(data), "--run", str(run), "--epochs", "1", "--quiet"]) == 0
    )
    assert main(["evaluate", "--run", str(run), "--split", "test"]) == 0
    assert main(["caption", "--run", str(run), str(data / "images" / "test_00000.png")]) == 0
    assert (
        main(
            [
                "train",
                "--preset",
                "tiny",
                "--data-dir",
                str(data),
                "--run",
                str(tmp_path / "att"),
                "--epochs",
                "1",
                "--decoder",
                "attention",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "caption",
                "--run",
                str(tmp_path / "att"),
                "--attention",
                str(tmp_path / "map.png"),
                str(data / "images" / "test_00000.png"),
            ]
        )
        == 0
    )
    assert "BLEU-4=" in capsys.readouterr().out
