#!/usr/bin/env python
"""`captioner serve` under load: 16 concurrent clients on 127.0.0.1, a bounded number of caption requests of one
image each (or, with --vqa-run, questions about one image each to /api/ask), with batching on (--max-batch 32) and
off (--max-batch 1), side by side in one process.

Each setting gets its own server (uvicorn in a thread, the model warmed up first). Clients send raw image
bytes from IMAGES (cycled) as fast as answers come back. Reported: requests/s, latency p50/p95/p99, and the
batch sizes the server formed.

    python scripts/bench_serve.py --run runs/demo --images 'data/shapes/images/test_*.png' [--requests 500] [--clients
    16] python scripts/bench_serve.py --run runs/demo --vqa-run runs/vqa-coco --images 'photos/*.jpg' --question "is
    there
    a dog ?"
"""

from __future__ import annotations

import argparse
import base64
import glob
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import httpx
import numpy as np
import uvicorn

from captioner.run import load_run
from captioner.serving.serve import ServeConfig, Service, create_app, listening_socket


def start(service: Service) -> tuple[uvicorn.Server, str]:
    sock = listening_socket("127.0.0.1", 0)  # a free port, held from now on
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="error"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def load(
    url: str, blobs: list[bytes], requests: int, clients: int, question: str | None = None
) -> tuple[float, list[float]]:
    """Caption requests (raw image bytes to /api/caption), or with `question` VQA requests to /api/ask."""
    encoded = [base64.b64encode(blob).decode() for blob in blobs] if question else []
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []

    def client(_):
        with httpx.Client(timeout=120) as session:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                started = time.perf_counter()
                if question:
                    response = session.post(
                        f"{url}/api/ask", json={"image": encoded[index % len(blobs)], "question": question}
                    )
                else:
                    response = session.post(f"{url}/api/caption", content=blobs[index % len(blobs)])
                response.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return time.perf_counter() - started, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--images", required=True, help="glob of image files")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--vqa-run", default=None, help="load this VQA run and load /api/ask instead of /api/caption")
    parser.add_argument("--question", default="is there a person ?", help="the question every /api/ask request asks")
    args = parser.parse_args()
    blobs = [open(path, "rb").read() for path in sorted(glob.glob(args.images))[:200]]
    run = load_run(args.run)
    vqa_run = load_run(args.vqa_run, task="vqa") if args.vqa_run else None
    question = args.question if vqa_run is not None else None
    what = f"/api/ask ({args.vqa_run})" if question else f"/api/caption ({args.run})"
    print(f"{what}: {args.requests} requests, {args.clients} clients, {len(blobs)} distinct images")
    print("| batching | requests/s | p50 ms | p95 ms | p99 ms | batches | mean batch | largest |")
    print("|---|---|---|---|---|---|---|---|")
    for max_batch in (1, 32):
        service = Service(run, vqa_run, ServeConfig(max_batch=max_batch, max_wait_ms=args.max_wait_ms))
        service.warm_up()
        batcher = service.vqa_batcher if question else service.batcher
        server, url = start(service)
        load(url, blobs, min(32, args.requests), args.clients, question)  # warm the connections and the model
        batcher.stats.sizes.clear()
        seconds, latencies = load(url, blobs, args.requests, args.clients, question)
        server.should_exit = True
        p50, p95, p99 = (1000 * float(np.percentile(latencies, q)) for q in (50, 95, 99))
        stats = batcher.stats.summary()
        name = "off (max 1)" if max_batch == 1 else f"on (max {max_batch}, wait {args.max_wait_ms:g} ms)"
        print(
            f"| {name} | {len(latencies) / seconds:.1f} | {p50:.0f} | {p95:.0f} | {p99:.0f} | {stats['batches']} "
            f"| {stats['mean_batch']:.1f} | {stats['largest_batch']} |",
            flush=True,
        )
        time.sleep(0.5)


if __name__ == "__main__":
    main()
