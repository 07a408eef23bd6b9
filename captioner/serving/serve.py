"""`captioner serve`: an HTTP API and a web page over a caption run (and optionally a VQA run).

Starlette (ASGI) served by uvicorn, on 127.0.0.1 unless told otherwise. Requests are decoded and checked
in the request handler (size limit, image safety, question length); captions and answers each go through a
`Batcher`: concurrent requests queue up and are computed together, up to `max_batch` images (or questions),
waiting at most `max_wait_ms` for a batch to fill - batched generation is many times faster per caption than
one image at a time. Each model runs in its own worker thread, so the event loop keeps accepting requests.

API (JSON in and out; errors are 4xx with {"error": one line}):
    GET  /                 the web page (everything served from here: no CDN)
    GET  /api/health       {"status": "ok"}
    GET  /api/info         the runs loaded, their decoders, image sizes, batching settings
    POST /api/caption      body: an encoded image (any Content-Type but JSON), or JSON {"images": [base64, ...]};
                           query/JSON "attention": true adds each word's attention map (attention runs),
                           "beams": true every beam's caption and score, best first (beam search)
    POST /api/ask          JSON {"image": base64, "question": "..."} -> answer and the top 5 (with --vqa-run)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from captioner.config import DecodeConfig
from captioner.data.images import read_image_bytes
from captioner.errors import CaptionerError
from captioner.run import Run

PAGE = Path(__file__).with_name("web") / "index.html"


@dataclass
class ServeConfig:
    """How the server batches and what it accepts."""

    max_batch: int = 32  # images decoded together at most; 1 turns batching off
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for others
    max_bytes: int = 8 * 1024 * 1024  # largest request body
    max_images: int = 64  # images per /api/caption request
    max_question_chars: int = 500


@dataclass
class BatchStats:
    """Batch sizes formed so far (for /api/info and the load benchmark)."""

    sizes: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        sizes = self.sizes
        return {
            "batches": len(sizes),
            "images": int(sum(sizes)),
            "mean_batch": float(np.mean(sizes)) if sizes else 0.0,
            "largest_batch": max(sizes, default=0),
        }


class Batcher:
    """Queue single items from many requests; run `fn(list of items) -> list of results` on batches of them
    in one worker thread. A batch starts with the first waiting item and takes whatever else arrives within
    `max_wait_ms`, up to `max_batch` items."""

    def __init__(self, fn: Callable[[list], list], max_batch: int, max_wait_ms: float):
        self.fn = fn
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner-model")

    async def submit(self, item) -> Any:
        if self._queue is None:  # created inside the server's event loop
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                try:
                    batch.append(
                        self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                    )
                except (TimeoutError, asyncio.QueueEmpty):
                    break
            live = [(item, future) for item, future in batch if not future.cancelled()]  # a client that left
            if not live:
                continue
            self.stats.sizes.append(len(live))
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [item for item, _ in live])
                for (_, future), result in zip(live, results):
                    if not future.cancelled():
                        future.set_result(result)
            except Exception as exc:  # the model failed on this batch: every waiting request gets the error
                for _, future in live:
                    if not future.cancelled():
                        future.set_exception(exc)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


class Service:
    """The loaded runs and what the HTTP layer calls: caption a batch, answer a question."""

    def __init__(self, caption_run: Run, vqa_run: Run | None, config: ServeConfig, decode: DecodeConfig | None = None):
        from captioner.tasks.caption import CaptionTask

        self.caption_run = caption_run
        self.vqa_run = vqa_run
        self.config = config
        # every beam (or sample) comes back: the page lists them
        self.generator = CaptionTask().generator(caption_run, decode)
        self.size = caption_run.model.encoder.image_size
        grid = caption_run.model.encoder.grid_shape
        self.grid = [int(grid[0]), int(grid[1])]
        self.attention = bool(caption_run.model.decoder.uses_attention)
        self.batcher = Batcher(self.caption_batch, config.max_batch, config.max_wait_ms)
        # questions from many requests, one call
        self.vqa_batcher = Batcher(self.answer_batch, config.max_batch, config.max_wait_ms)
        if vqa_run is not None:
            from captioner.tasks.vqa import VQATask

            self.answerer = VQATask().answerer(vqa_run)
            self.vqa_size = vqa_run.model.encoder.image_size

    def warm_up(self) -> None:
        """Trace the search once (a batch of 8), so that no request pays for it."""
        self.caption_batch([np.zeros((self.size, self.size, 3), np.uint8)] * 8)

    def caption_batch(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        generated = self.generator(np.stack(images))  # (batch, size, size, 3) -> tokens (batch, max_length)
        results = []
        for row in range(len(images)):
            # One word per step before <end>: <pad>, <start> and <unk> are never generated, so these are the tokens.
            words = generated.captions[row].split()
            result = {"caption": generated.captions[row], "score": float(generated.scores[row]), "words": words}
            if generated.beams is not None:
                result["beams"] = [{"caption": caption, "score": score} for caption, score in generated.beams[row]]
            if self.attention:
                result["attention"] = np.round(generated.attention[row, : len(words)], 4).tolist()  # (words, pixels)
            results.append(result)
        return results

    def info(self) -> dict[str, Any]:
        config = self.caption_run.config
        info = {
            "caption_run": str(self.caption_run.path),
            "decoder": config.model.decoder,
            "attention": config.model.attention if self.attention else None,
            "encoder": config.model.encoder,
            "image_size": self.size,
            "attention_grid": self.grid if self.attention else None,
            "beam_size": self.generator.beam_size,
            "sampler": self.generator.sampler.get_config(),
            "batching": {
                "max_batch": self.config.max_batch,
                "max_wait_ms": self.config.max_wait_ms,
                **self.batcher.stats.summary(),
            },
            "vqa_batching": self.vqa_batcher.stats.summary(),
            "limits": {
                "max_bytes": self.config.max_bytes,
                "max_images": self.config.max_images,
                "max_question_chars": self.config.max_question_chars,
            },
            "vqa_run": str(self.vqa_run.path) if self.vqa_run is not None else None,
        }
        return info

    def encode_question(self, question: str):
        """The question's word ids, or a CaptionerError for one with no words (before it joins a batch)."""
        encoded = self.answerer.encode(question)
        if not encoded.ids:
            raise CaptionerError(f'question {question!r} has no words; ask something, e.g. "what color is the circle?"')
        return encoded

    def answer_batch(self, items: list[tuple[np.ndarray, Any, str]]) -> list[dict[str, Any]]:
        """(image, encoded question, question text) from many requests -> one answer each, in one model call."""
        images = np.stack([image for image, _, _ in items])  # (batch, size, size, 3)
        questions = self.answerer.question_array([[encoded] for _, encoded, _ in items])  # (batch, 1, steps)
        probabilities, _ = self.answerer(images, questions)  # (batch, 1, num_answers)
        results = []
        for row, (_, encoded, question) in enumerate(items):
            top = self.answerer.top(probabilities[row, 0], 5)
            result = {
                "question": question,
                "answer": top[0][0],
                "top": [{"answer": a, "probability": p} for a, p in top],
            }
            if encoded.unknown_words:
                result["warning"] = f"word(s) this model never saw: {', '.join(encoded.unknown_words)}"
            results.append(result)
        return results

    def answer(self, image: np.ndarray, question: str) -> dict[str, Any]:
        """One question about one image, outside the server's batching (benchmarks, tests)."""
        return self.answer_batch([(image, self.encode_question(question), question)])[0]


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(service: Service):
    """The Starlette application over `service`."""
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    config = service.config

    async def body_of(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_bytes:
            raise BadRequest(
                413, f"request body of {int(declared):,} bytes is over the {config.max_bytes:,}-byte limit"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_bytes:
                raise BadRequest(413, f"request body is over the {config.max_bytes:,}-byte limit")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body:
            raise BadRequest(400, "empty request body; send an image file, or JSON")
        return body

    def json_of(body: bytes) -> dict:
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(400, f"malformed JSON body ({exc.__class__.__name__}: {str(exc)[:80]})") from None
        if not isinstance(value, dict):
            raise BadRequest(400, "the JSON body must be an object")
        return value

    def decoded(data: str, name: str) -> bytes:
        if not isinstance(data, str):
            raise BadRequest(400, f"{name} must be a base64 string")
        try:
            return base64.b64decode(data.split(",", 1)[-1] if data.startswith("data:") else data, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(400, f"{name} is not valid base64") from None

    def image_of(data: bytes, name: str, size: int) -> np.ndarray:
        try:
            return read_image_bytes(data, size, name)[0]
        except CaptionerError as exc:
            raise BadRequest(415, str(exc)) from None

    def wants_attention(request: Request, payload: dict) -> bool:
        return (
            request.query_params.get("attention", "").lower() in ("1", "true", "yes")
            or payload.get("attention") is True
        )

    async def caption(request: Request):
        body = await body_of(request)
        payload: dict = {}
        if request.headers.get("content-type", "").startswith("application/json"):
            payload = json_of(body)
            images = payload.get("images")
            if not isinstance(images, list) or not images:
                raise BadRequest(400, 'JSON must hold "images": a non-empty list of base64-encoded image files')
            if len(images) > config.max_images:
                raise BadRequest(413, f"{len(images)} images in one request; at most {config.max_images}")
            blobs = [decoded(item, f"images[{i}]") for i, item in enumerate(images)]
        else:
            blobs = [body]
        arrays = [
            image_of(blob, f"image {i}" if len(blobs) > 1 else "image", service.size) for i, blob in enumerate(blobs)
        ]
        started = time.perf_counter()
        results = await asyncio.gather(*(service.batcher.submit(a) for a in arrays))
        attention = wants_attention(request, payload)
        beams = request.query_params.get("beams", "").lower() in ("1", "true", "yes") or payload.get("beams") is True
        shown = {"attention"} if attention else set()
        shown |= {"beams"} if beams else set()
        results = [{k: v for k, v in r.items() if k not in ("attention", "beams") or k in shown} for r in results]
        extra = {"attention_grid": service.grid} if attention and service.attention else {}
        out = {"results": results, "seconds": round(time.perf_counter() - started, 4), **extra}
        return JSONResponse(out)

    async def ask(request: Request):
        if service.vqa_run is None:
            raise BadRequest(404, "no VQA run is loaded; start the server with --vqa-run RUN")
        payload = json_of(await body_of(request))
        question = payload.get("question")
        if not isinstance(question, str) or not question.strip():
            raise BadRequest(400, 'JSON must hold "question": a non-empty string')
        if len(question) > config.max_question_chars:
            raise BadRequest(400, f"question of {len(question):,} characters; at most {config.max_question_chars}")
        image = image_of(decoded(payload.get("image"), "image"), "image", service.vqa_size)
        try:
            encoded = service.encode_question(question)
        except CaptionerError as exc:
            raise BadRequest(400, str(exc)) from None
        return JSONResponse(await service.vqa_batcher.submit((image, encoded, question)))

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    async def info(request: Request):
        return JSONResponse(service.info())

    async def page(request: Request):
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    async def bad_request(request: Request, exc: BadRequest):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def disconnected(request: Request, exc: ClientDisconnect):
        return Response(status_code=499)  # nobody reads it; the connection is gone

    async def server_error(request: Request, exc: Exception):
        return JSONResponse({"error": f"internal error: {exc.__class__.__name__}: {str(exc)[:200]}"}, status_code=500)

    routes = [
        Route("/", page),
        Route("/api/health", health),
        Route("/api/info", info),
        Route("/api/caption", caption, methods=["POST"]),
        Route("/api/ask", ask, methods=["POST"]),
    ]
    handlers = {BadRequest: bad_request, ClientDisconnect: disconnected, Exception: server_error}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.batcher.close()
        service.vqa_batcher.close()

    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or a one-line CaptionerError (a port in use, an address not of this
    machine), so a server fails before it loads anything and never announces an address it cannot serve."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise CaptionerError(
            f"cannot listen on {host}:{port}: {exc.strerror}; pass --host 127.0.0.1 or this machine's address"
        ) from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait for TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CaptionerError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port or stop what uses it"
        ) from None
    return sock


def serve(
    caption_run: Run,
    vqa_run: Run | None,
    host: str,
    port: int,
    config: ServeConfig,
    decode: DecodeConfig | None = None,
    announce: Callable[[str], None] = print,
) -> None:
    """Bind, load, warm up, and serve until interrupted."""
    import uvicorn

    sock = listening_socket(host, port)
    service = Service(caption_run, vqa_run, config, decode)
    service.warm_up()
    announce(
        f"serving {caption_run.path} on http://{host}:{port}/ (batches of up to {config.max_batch}, "
        f"waiting up to {config.max_wait_ms:g} ms); Ctrl-C stops"
    )
    uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning")).run(sockets=[sock])
