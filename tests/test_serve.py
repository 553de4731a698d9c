"""Serving over HTTP on loopback: a running `scripts/serve.py` (LitServe) answers real HTTP requests with the
right labels (raw body and multipart), the Predictor's numbers, concurrent clients, window mode with segments,
a 4xx with the reason for every kind of bad upload, server paths only inside allowed_root, and stays healthy."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from vidlstm.data.synthetic import write_mp4
from vidlstm.inference.predictor import Predictor

from .conftest import brightness_clip
from .video_factory import write_audio_only

pytest.importorskip("litserve")

from vidlstm.cli.benchmark.serve import free_port, post, start_server, stop_server, wait_healthy
from vidlstm.inference.serve import BadRequest, allowed_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("uploads")
    (root / "allowed").mkdir()
    write_mp4(root / "allowed" / "dark.mp4", brightness_clip(40, 12, 1), fps=8)
    write_mp4(root / "bright.mp4", brightness_clip(215, 12, 2), fps=8)
    write_mp4(root / "long.mp4", np.concatenate([brightness_clip(40, 48, 3), brightness_clip(215, 48, 4)]), fps=8)
    good = (root / "bright.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    write_audio_only(root / "audio_only.mp4")
    os.symlink(root / "bright.mp4", root / "allowed" / "escape.mp4")  # a link out of the allowed root
    return {p.stem: p for p in root.rglob("*.mp4")} | {"root": root}


@pytest.fixture(scope="module")
def server(brightness_checkpoint: Path, videos: dict[str, Path]) -> Iterator[str]:
    port = free_port()
    log = videos["root"] / "server" / "server.log"
    log.parent.mkdir()
    process = start_server(brightness_checkpoint, port, log, "max_upload_mb=0.2", "max_batch_size=4",
                           f"allowed_root={videos['root'] / 'allowed'}", "num_clips=2", "top_k=2")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        stop_server(process)
        print(log.read_text()[-3000:])


def _multipart(url: str, field: str, data: bytes, query: str = "") -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"clip.mp4\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}/predict{query}", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _json(url: str, payload: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/predict", data=payload, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _health(url: str) -> int:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as answer:
        return answer.status


def test_uploads_get_the_right_label_and_the_predictors_numbers(server: str, videos: dict[str, Path],
                                                                brightness_checkpoint: Path) -> None:
    status, body, _ = post(server, videos["dark"].read_bytes())
    assert status == 200 and body["label"] == "dark" and body["topk_labels"] == ["dark", "bright"]
    assert set(body) >= {"label", "score", "topk_labels", "topk_scores", "num_frames"} and body["num_frames"] == 12
    status, multipart = _multipart(server, "file", videos["bright"].read_bytes())
    assert status == 200 and multipart["label"] == "bright"
    local = Predictor.from_checkpoint(brightness_checkpoint, device="cpu", num_clips=2, top_k=2)
    expected = local.predict_video(videos["bright"])
    assert multipart["topk_scores"] == pytest.approx(expected["topk_scores"], abs=1e-5)


def test_concurrent_clients_are_all_answered_correctly(server: str, videos: dict[str, Path]) -> None:
    uploads = [("dark", videos["dark"].read_bytes()), ("bright", videos["bright"].read_bytes())] * 6
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda item: post(server, item[1]), uploads))
    assert [(status, body["label"]) for status, body, _ in answers] == [(200, label) for label, _ in uploads]


def test_window_mode_returns_windows_and_segments(server: str, videos: dict[str, Path]) -> None:
    status, body = _multipart(server, "file", videos["long"].read_bytes(), "?window=2&stride=2")
    assert status == 200
    assert [(w["start_s"], w["end_s"], w["label"]) for w in body["windows"]] == [
        (0, 2, "dark"), (2, 4, "dark"), (4, 6, "dark"), (6, 8, "bright"), (8, 10, "bright"), (10, 12, "bright")]
    # segments smooth over 3 windows (conf/segments/default.yaml), so bright starts one window late
    assert [(s["label"], s["start_s"]) for s in body["segments"]] == [("dark", 0), ("bright", 8)]
    assert [s["label"] for s in body["segments"]] == ["dark", "bright"] and body["segments"][-1]["end_s"] == 12


@pytest.mark.parametrize(("case", "status", "reason"), [
    ("not_a_video", 422, "not a decodable video"),
    ("truncated", 422, "not a decodable video"),
    ("audio_only", 422, "no video stream"),
    ("empty", 400, "empty upload"),
    ("too_large", 413, "larger than the server's limit"),
    ("multipart_without_file", 400, "without a 'file' field"),
    ("bad_window", 400, "window='soon' is not a number"),
    ("outside_root", 403, "outside the server's allowed_root"),
    ("link_out_of_root", 403, "outside the server's allowed_root"),
    ("absolute_outside", 403, "outside the server's allowed_root"),
    ("missing_under_root", 404, "no such file under allowed_root"),
    ("json_without_path", 400, "a JSON body must be"),
])
def test_bad_requests_get_a_4xx_with_the_reason(server: str, videos: dict[str, Path], case: str, status: int,
                                                reason: str) -> None:
    if case == "not_a_video":
        got, body, _ = post(server, b"meeting notes, not a video\n" * 100)
    elif case in ("truncated", "audio_only"):
        got, body, _ = post(server, videos[case].read_bytes())
    elif case == "empty":
        got, body, _ = post(server, b"")
    elif case == "too_large":
        got, body, _ = post(server, bytes(300_000))
    elif case == "multipart_without_file":
        got, body = _multipart(server, "video", videos["dark"].read_bytes())
    elif case == "bad_window":
        got, body = _multipart(server, "file", videos["dark"].read_bytes(), "?window=soon")
    else:
        name = {"outside_root": "../bright.mp4", "link_out_of_root": "escape.mp4",
                "absolute_outside": str(videos["bright"]), "missing_under_root": "nope.mp4"}.get(case)
        got, body = _json(server, b"{}" if name is None else f'{{"path": "{name}"}}'.encode())
    assert (got, reason in body["error"]) == (status, True), body
    assert "vidlstm-upload-" not in body["error"]  # the server's temporary file name is never shown
    assert _health(server) == 200


def test_a_file_under_the_allowed_root_is_read_and_the_server_stays_healthy(server: str) -> None:
    status, body = _json(server, b'{"path": "dark.mp4"}')
    assert status == 200 and body["label"] == "dark"
    assert _health(server) == 200
    status, body, _ = post(server, (Path(__file__).parent / "__init__.py").read_bytes() + b"x" * 100)
    assert status == 422
    status, body, _ = post(server, b"\x00" * 10)
    assert status == 422 and _health(server) == 200


def test_server_paths_need_an_allowed_root(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"x")
    with pytest.raises(BadRequest, match="no allowed_root") as err:
        allowed_path("clip.mp4", None)
    assert err.value.status == 403
    assert allowed_path("clip.mp4", str(tmp_path)) == tmp_path / "clip.mp4"


def test_the_benchmark_load_measures_requests_and_latency(server: str, videos: dict[str, Path]) -> None:
    from vidlstm.cli.benchmark.serve import load

    result = load(server, [videos["dark"].read_bytes(), videos["bright"].read_bytes()], clients=4, requests=8)
    assert result["requests_per_s"] > 0 and 0 < result["p50_ms"] <= result["p95_ms"] < 120_000
    with pytest.raises(RuntimeError, match="8 of 8 requests failed"):
        load(server, [b"not a video"], clients=4, requests=8)
