"""`captioner serve`: the JSON API over a real uvicorn server, batching across clients, and bad input fired in
between good requests (the server keeps serving the others)."""

import base64
import socket
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from conftest import serving  # noqa: E402

from captioner.run import load_run  # noqa: E402
from captioner.serving.serve import Batcher, ServeConfig, Service  # noqa: E402
from captioner.tasks.caption import caption_files  # noqa: E402


@pytest.fixture(scope="module")
def server(attention_run, vqa_run):
    """A real server: attention captions, questions, a 200 KB body limit."""
    config = ServeConfig(max_batch=16, max_wait_ms=20, max_bytes=200_000, max_question_chars=500)
    service = Service(load_run(attention_run), load_run(vqa_run, task="vqa"), config)
    service.warm_up()
    with serving(service) as url:
        yield url, service


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels (a decompression bomb's calling card)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_captions_over_http_equal_the_library_s(server, attention_run, tiny_data):
    url, _ = server
    paths = sorted((tiny_data / "images").glob("test_*.png"))[:4]
    expected = [r["caption"] for r in caption_files(load_run(attention_run), [str(p) for p in paths])]
    one = httpx.post(
        f"{url}/api/caption?attention=1", content=paths[0].read_bytes(), headers={"Content-Type": "image/png"}
    )
    assert one.status_code == 200, one.text
    result = one.json()["results"][0]
    assert result["caption"] == expected[0] and " ".join(result["words"]) == expected[0]
    grid = one.json()["attention_grid"]
    assert len(result["attention"]) == len(result["words"]) and all(
        len(a) == grid[0] * grid[1] for a in result["attention"]
    )
    many = httpx.post(f"{url}/api/caption", json={"images": [base64.b64encode(p.read_bytes()).decode() for p in paths]})
    assert [r["caption"] for r in many.json()["results"]] == expected and "attention" not in many.json()["results"][0]
    beams = httpx.post(f"{url}/api/caption?beams=1", content=paths[0].read_bytes()).json()["results"][0]["beams"]
    assert beams[0]["caption"] == expected[0] and [b["score"] for b in beams] == sorted(
        (b["score"] for b in beams), reverse=True
    )
    assert httpx.get(f"{url}/api/health").json() == {"status": "ok"}
    info = httpx.get(f"{url}/api/info").json()
    assert info["decoder"] == "attention" and info["vqa_run"] and info["batching"]["max_batch"] == 16
    page = httpx.get(f"{url}/")
    assert (
        page.status_code == 200
        and "<canvas" in page.text
        and "http" not in page.text.split("<script>")[1].split("fetch(")[0]
    )


def test_concurrent_clients_are_decoded_together(server, tiny_data):
    url, service = server
    blobs = [p.read_bytes() for p in sorted((tiny_data / "images").glob("val_*.png"))[:8]]
    before = len(service.batcher.stats.sizes)

    def client(i):
        with httpx.Client() as session:
            return [
                session.post(f"{url}/api/caption", content=blobs[(i + k) % len(blobs)]).json()["results"][0]["caption"]
                for k in range(3)
            ]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(client, range(16)))
    assert all(all(a) for a in answers)
    sizes = service.batcher.stats.sizes[before:]
    assert sum(sizes) == 48 and max(sizes) > 1  # some requests shared a batch
    # The same image gets the same caption whichever batch it landed in.
    by_image = {}
    for i, captions in enumerate(answers):
        for k, caption in enumerate(captions):
            by_image.setdefault((i + k) % len(blobs), set()).add(caption)
    assert all(len(c) == 1 for c in by_image.values())


def _disconnect_mid_upload(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(
            b"POST /api/caption HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
            + b"\x89PNG" * 10
        )


def test_bad_input_gets_one_line_4xx_and_the_others_are_still_served(server, tiny_data):
    url, _ = server
    good = sorted((tiny_data / "images").glob("test_*.png"))[0].read_bytes()
    image64 = base64.b64encode(good).decode()
    bad = [
        (lambda: httpx.post(f"{url}/api/caption", content=b"this is not an image"), 415, "not a JPEG, PNG"),
        (lambda: httpx.post(f"{url}/api/caption", content=b""), 400, "empty request body"),
        (lambda: httpx.post(f"{url}/api/caption", content=b"\0" * 300_000), 413, "limit"),
        (lambda: httpx.post(f"{url}/api/caption", content=_png_declaring(30_000, 30_000)), 415, "pixels"),
        (
            lambda: httpx.post(
                f"{url}/api/caption", content=b'{"images": [', headers={"Content-Type": "application/json"}
            ),
            400,
            "malformed JSON",
        ),
        (lambda: httpx.post(f"{url}/api/caption", json={"images": ["%%%"]}), 400, "base64"),
        (lambda: httpx.post(f"{url}/api/ask", json={"image": image64, "question": "why " * 2500}), 400, "characters"),
        (lambda: httpx.post(f"{url}/api/ask", json={"image": image64, "question": " ? "}), 400, "no words"),
        (lambda: httpx.post(f"{url}/api/ask", json={"question": "what color is the circle"}), 400, "base64"),
        (lambda: _disconnect_mid_upload(url), None, None),
    ]
    for send, status, words in bad:
        response = send()
        if status is not None:
            assert response.status_code == status, (words, response.text)
            message = response.json()["error"]
            assert words in message and "\n" not in message
        ok = httpx.post(f"{url}/api/caption", content=good)
        assert ok.status_code == 200 and ok.json()["results"][0]["caption"]
    answer = httpx.post(f"{url}/api/ask", json={"image": image64, "question": "how many shapes are there?"})
    assert answer.status_code == 200 and len(answer.json()["top"]) == 5


def test_concurrent_questions_are_answered_together_as_one_at_a_time(server, tiny_data):
    url, service = server
    images = sorted((tiny_data / "images").glob("val_*.png"))[:4]
    questions = ["how many shapes are there?", "what color is the circle?", "is there a square?"]
    jobs = [(base64.b64encode(images[i % 4].read_bytes()).decode(), questions[i % 3]) for i in range(24)]
    from captioner.data.images import load_image

    alone = [service.answer(load_image(str(images[i % 4]), service.vqa_size), questions[i % 3]) for i in range(24)]
    before = len(service.vqa_batcher.stats.sizes)
    with ThreadPoolExecutor(12) as pool:
        answered = list(
            pool.map(lambda job: httpx.post(f"{url}/api/ask", json={"image": job[0], "question": job[1]}).json(), jobs)
        )
    sizes = service.vqa_batcher.stats.sizes[before:]
    assert sum(sizes) == 24 and max(sizes) > 1  # questions from several requests shared a model call
    assert [a["answer"] for a in answered] == [a["answer"] for a in alone]
    for got, want in zip(answered, alone):
        assert got["top"][0]["probability"] == pytest.approx(want["top"][0]["probability"], abs=1e-5)
    assert httpx.get(f"{url}/api/info").json()["vqa_batching"]["largest_batch"] > 1


def test_a_failing_batch_fails_its_requests_not_the_batcher():
    import asyncio

    calls = []

    def flaky(items):
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("injected")
        return [item * 2 for item in items]

    async def scenario():
        batcher = Batcher(flaky, max_batch=4, max_wait_ms=1)
        first = await asyncio.gather(batcher.submit(1), return_exceptions=True)
        second = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        batcher.close()
        return first, second

    first, second = asyncio.run(scenario())
    assert isinstance(first[0], RuntimeError) and second == [0, 2, 4]


def test_a_busy_port_is_one_line_before_anything_is_announced(attention_run, capsys):
    from captioner.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--run", str(attention_run), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert "serving" not in out  # no address announced that is not being served
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err and "choose another --port" in err
