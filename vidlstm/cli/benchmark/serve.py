"""``serve``: requests/s and latency of `vidlstm-serve` for 1 and 8 concurrent clients.

A server (`scripts/serve.py`, LitServe) is started on a free loopback port with ``--ckpt`` (default: the demo's
tiny model with random weights; speed does not depend on the weights); ``--requests`` uploads of short demo
videos (raw request bodies) are sent by each number of concurrent ``--clients``, after a warm-up. Latency is a
request's wall time at the client (upload, decoding, batching, model, answer); p50/p95 over the requests.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vidlstm.cli.benchmark.stream import random_checkpoint


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(ckpt: Path, port: int, log: Path, *overrides: str) -> subprocess.Popen:
    """`python -m vidlstm.cli.serve` in its own process group (stop it with `stop_server`)."""
    command = [sys.executable, "-m", "vidlstm.cli.serve", f"ckpt_path={ckpt}", "host=127.0.0.1", f"port={port}",
               "device=cpu", f"hydra.run.dir={log.parent}", "log_level=warning", *overrides]
    with open(log, "w") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/health did not answer 200 within {timeout_s:g} s")


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (LitServe shuts its workers down), SIGKILL if it lingers."""
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def post(url: str, body: bytes, timeout_s: float = 120.0) -> tuple[int, dict, float]:
    """(HTTP status, JSON answer, seconds) of one raw-body upload."""
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            status, payload = answer.status, answer.read()
    except urllib.error.HTTPError as err:
        status, payload = err.code, err.read()
    return status, json.loads(payload or b"{}"), time.perf_counter() - started


def sample_videos(folder: Path, count: int) -> list[bytes]:
    """``count`` short demo videos (64 px, 24-32 frames), as bytes."""
    from vidlstm.data.synthetic import DEMO_CLASSES, render_clip, write_mp4

    rng = np.random.default_rng(0)
    out = []
    for n in range(count):
        path = folder / f"v{n}.mp4"
        write_mp4(path, render_clip(DEMO_CLASSES[n % len(DEMO_CLASSES)], rng, size=64, min_frames=24,
                                    max_frames=32), fps=15)
        out.append(path.read_bytes())
    return out


def load(url: str, videos: list[bytes], clients: int, requests: int) -> dict[str, float]:
    bodies = [videos[i % len(videos)] for i in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda body: post(url, body), bodies))
    wall = time.perf_counter() - started
    failed = [status for status, _, _ in results if status != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} of {requests} requests failed (statuses {sorted(set(failed))})")
    latencies = sorted(seconds for _, _, seconds in results)
    return {"requests_per_s": requests / wall, "p50_ms": statistics.median(latencies) * 1e3,
            "p95_ms": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1e3}


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        ckpt = args.ckpt or random_checkpoint(root / "demo.ckpt")
        videos = sample_videos(root, 8)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(ckpt, port, root / "server.log", f"max_batch_size={args.max_batch_size}")
        try:
            wait_healthy(url, server)
            load(url, videos, 2, 4)  # warm-up
            print(f"serve benchmark: {ckpt if args.ckpt else 'demo model (random weights)'}, {args.requests} "
                  f"uploads of {len(videos[0]) // 1024}-{max(len(v) for v in videos) // 1024} KB demo videos per "
                  f"run, max_batch_size {args.max_batch_size} (cpus: {os.cpu_count()})")
            print(f"  {'clients':>8} {'requests/s':>11} {'p50 latency':>12} {'p95 latency':>12}")
            for clients in args.clients:
                result = load(url, videos, clients, args.requests)
                print(f"  {clients:8d} {result['requests_per_s']:11.1f} {result['p50_ms']:9.0f} ms "
                      f"{result['p95_ms']:9.0f} ms")
        except Exception:
            print((root / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            stop_server(server)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", type=Path, help="checkpoint (default: a random-weights demo model)")
    parser.add_argument("--requests", type=int, default=48, help="requests per client count")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="concurrent clients to measure")
    parser.add_argument("--max-batch-size", type=int, default=8, help="the server's max_batch_size")
