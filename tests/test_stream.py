"""Streaming: the same windows, numbers and segments as predict.py window mode on the same file; a real MPEG-TS
stream over HTTP on loopback (paced as a live source), a stall with reconnect, garbage, frames dropped on
purpose when the model falls behind, and state=carry against the head run on the whole sequence."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vidlstm.cli.benchmark.stream import random_checkpoint
from vidlstm.data.synthetic import write_mp4
from vidlstm.inference.batch import predict_folder
from vidlstm.inference.predictor import Predictor, windows
from vidlstm.inference.stream import CarryEngine, Frame, PyAVSource, Reconnect, SourceError, stream

from .conftest import brightness_clip
from .video_factory import write_audio_only

REPO = Path(__file__).resolve().parents[1]
FPS = 10


def _dark_then_bright(seconds_each: int, seed: int) -> np.ndarray:
    return np.concatenate([brightness_clip(40, seconds_each * FPS, seed), brightness_clip(215, seconds_each * FPS,
                                                                                           seed + 1)])


def write_ts(path: Path, frames: np.ndarray, fps: int = FPS) -> Path:
    """An H.264 MPEG-TS file (a keyframe every second), as live encoders send."""
    with av.open(str(path), "w", format="mpegts") as container:
        out = container.add_stream("libx264", rate=fps)
        out.height, out.width = frames.shape[1:3]
        out.pix_fmt, out.options = "yuv420p", {"crf": "10", "g": str(fps)}
        for frame in frames:
            for packet in out.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in out.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def predictor(brightness_checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(brightness_checkpoint, device="cpu", num_clips=1, top_k=2, backend="pyav")


def _offline_probs(predictor: Predictor, path: Path, window_s: float, stride_s: float) -> list[torch.Tensor]:
    with predictor.open(path) as reader:
        return [predictor.probabilities(predictor.window_clip(reader, w)[None])[0]
                for w in windows(reader.num_frames, reader.fps, window_s, stride_s)]


def _assert_same_windows(events: list[dict], offline_rows: list[dict], offline_probs: list[torch.Tensor]) -> None:
    streamed = [e for e in events if e["kind"] == "window"]
    assert len(streamed) == len(offline_rows) == len(offline_probs)
    for event, row, probs in zip(streamed, offline_rows, offline_probs, strict=True):
        assert (event["start_s"], event["end_s"], event["label"]) == (float(row["start_s"]), float(row["end_s"]),
                                                                      row["label"])
        torch.testing.assert_close(event["_probs"], probs, atol=1e-5, rtol=0)
        assert event["dropped_frames"] == 0


def test_streaming_a_file_equals_window_mode_and_its_segments(predictor: Predictor, tmp_path: Path) -> None:
    video = tmp_path / "long.mp4"
    write_mp4(video, _dark_then_bright(6, 10), fps=FPS)
    predict_folder(predictor, video, tmp_path / "offline.jsonl", window_s=2, stride_s=1, num_workers=0,
                   segments_output=tmp_path / "offline.segments.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "offline.jsonl").read_text().splitlines()][:-1]
    events: list[dict] = []
    result = stream(predictor, str(video), tmp_path / "events.jsonl", 2, 1, on_event=events.append)
    _assert_same_windows(events, rows, _offline_probs(predictor, video, 2, 1))
    assert [r["label"] for r in rows] == ["dark"] * 5 + ["bright"] * 6  # 11 windows: [0,2] ... [10,12]
    assert (result.frames, result.dropped, result.failed, result.end_reason) == (120, 0, False, "the stream ended")
    assert result.encoded <= result.frames  # each frame through the CNN at most once (only sampled ones)

    written = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in written].count("window") == 11
    segments = [e for e in written if e["kind"] == "segment"]
    offline = [json.loads(line) for line in (tmp_path / "offline.segments.jsonl").read_text().splitlines()]
    assert [(s["label"], s["start_s"], s["end_s"]) for s in segments] == \
        [(s["label"], s["start_s"], s["end_s"]) for s in offline]
    assert [s["score"] for s in segments] == pytest.approx([s["score"] for s in offline], abs=1e-5)
    assert [s["label"] for s in segments] == ["dark", "bright"] and segments[-1]["end_s"] == 12.0
    assert 5.0 <= segments[1]["start_s"] <= 7.0 and segments[0]["end_s"] == segments[1]["start_s"]
    assert set(written[0]) >= {"kind", "start_s", "end_s", "label", "score", "topk_labels", "topk_scores"}


class _Feed(http.server.BaseHTTPRequestHandler):
    """Serves ``plan[n]`` for the n-th request (the last one for any later request): ("paced", data) sends at
    the stream's own rate, ("stall", data) sends half and then nothing for 3 s, ("dead", _) sends nothing for
    3 s, ("garbage", data) sends the bytes as they are."""

    plan: list[tuple[str, bytes]] = []
    seconds = 1.0
    requests = 0

    def do_GET(self) -> None:
        kind, data = self.plan[min(type(self).requests, len(self.plan) - 1)]
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            if kind == "dead":
                time.sleep(3)
                return
            if kind == "stall":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                time.sleep(3)
                return
            chunks = 20 if kind == "paced" else 1
            for n in range(chunks):
                self.wfile.write(data[n * len(data) // chunks: (n + 1) * len(data) // chunks])
                self.wfile.flush()
                if kind == "paced":
                    time.sleep(self.seconds / chunks)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def feed() -> Iterator[Callable[[list[tuple[str, bytes]], float], str]]:
    """Starts an HTTP server on a free loopback port; returns the URL of its stream."""
    servers = []

    def start(plan: list[tuple[str, bytes]], seconds: float = 1.0) -> str:
        handler = type("Feed", (_Feed,), {"plan": plan, "seconds": seconds, "requests": 0})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/live.ts"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_a_live_mpegts_stream_over_http_equals_window_mode_on_the_file(predictor: Predictor, feed: Callable,
                                                                       tmp_path: Path) -> None:
    ts = write_ts(tmp_path / "live.ts", _dark_then_bright(3, 20))
    url = feed([("paced", ts.read_bytes())], 6.0)
    events: list[dict] = []
    started = time.monotonic()
    # max_lag_s is generous so a busy test machine drops nothing and the numbers can be compared exactly
    result = stream(predictor, url, tmp_path / "events.jsonl", 2, 1, max_lag_s=30, on_event=events.append)
    assert time.monotonic() - started >= 5.0, "the stream arrives at its own pace"
    assert (result.failed, result.reconnects, result.frames, result.dropped) == (False, 0, 60, 0)
    rows = predictor.predict_windows(ts, 2, 1)[:-1]
    _assert_same_windows(events, rows, _offline_probs(predictor, ts, 2, 1))
    assert [e["label"] for e in events if e["kind"] == "window"] == ["dark"] * 2 + ["bright"] * 3
    assert [e["label"] for e in events if e["kind"] == "segment"] == ["dark", "bright"]


@pytest.mark.slow
def test_a_stalled_stream_reconnects_and_one_that_stays_stalled_ends_with_its_windows_written(
        predictor: Predictor, feed: Callable, tmp_path: Path) -> None:
    data = write_ts(tmp_path / "live.ts", _dark_then_bright(3, 30)).read_bytes()
    url = feed([("stall", data), ("paced", data)], 1.0)
    result = stream(predictor, url, tmp_path / "a.jsonl", 2, 1, read_timeout_s=1.0, max_lag_s=30,
                    reconnect=Reconnect(attempts=3, initial_s=0.1))
    assert (result.failed, result.reconnects, result.end_reason) == (False, 1, "the stream ended")
    assert result.frames > 60  # half of the first delivery, then the whole second one

    url = feed([("stall", data), ("dead", b"")], 1.0)
    result = stream(predictor, url, tmp_path / "b.jsonl", 2, 1, open_timeout_s=1.0, read_timeout_s=1.0,
                    max_lag_s=30, reconnect=Reconnect(attempts=1, initial_s=0.1))
    assert result.failed and "gave up after 1 reconnect" in result.end_reason, result.end_reason
    lines = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in lines].count("window") >= 2 and lines[-1]["kind"] == "segment"


def test_garbage_and_missing_sources_fail_with_the_reason(predictor: Predictor, feed: Callable,
                                                          tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    with pytest.raises(SourceError, match="not a video") as err:
        stream(predictor, feed([("garbage", noise)]), tmp_path / "e.jsonl")
    assert err.value.fatal
    with pytest.raises(SourceError, match="no such file"):
        stream(predictor, str(tmp_path / "missing.mp4"), tmp_path / "e.jsonl")
    write_audio_only(tmp_path / "audio.mp4")
    with pytest.raises(SourceError, match="no video stream"):
        stream(predictor, str(tmp_path / "audio.mp4"), tmp_path / "e.jsonl")


def test_frames_are_dropped_on_purpose_when_the_model_falls_behind(predictor: Predictor, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    video = tmp_path / "clip.mp4"
    write_mp4(video, brightness_clip(215, 60, 3), fps=20)  # 3 s at 20 frames/s
    encoder = predictor.net.encoder
    real = encoder.frame_features

    def slow(frames: torch.Tensor) -> torch.Tensor:  # 2 frames/s; the windows sample 4 frames/s
        time.sleep(0.5 * len(frames))
        return real(frames)

    monkeypatch.setattr(encoder, "frame_features", slow)
    events: list[dict] = []
    result = stream(predictor, str(video), tmp_path / "e.jsonl", 1, 0.5, realtime=True, max_lag_s=0.3,
                    batch_frames=2, on_event=events.append)
    assert result.dropped > 0 and result.frames == 60 and not result.failed
    assert max(result.lags) < 2.0, result.lags  # bounded: max_lag_s plus a batch, never the whole backlog
    assert any(e["dropped_frames"] > 0 for e in events if e["kind"] == "window")
    assert all(e["label"] == "bright" for e in events if e["kind"] == "window")


def test_carry_state_equals_the_head_on_every_frame_fed_so_far(predictor: Predictor, tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    write_mp4(video, _dark_then_bright(2, 40), fps=FPS)
    engine = CarryEngine(predictor, FPS, 2.0, 1.0)
    assert engine.step == 5  # 2 s at 10 frames/s = 20 frames for a 4-frame clip
    fed: list[torch.Tensor] = []
    encode = engine.encode
    engine.encode = lambda images: fed.append(out := encode(images)) or out  # type: ignore[method-assign]
    source = PyAVSource(str(video))
    events = []
    frames = [Frame(i, time.monotonic(), image) for i, image in enumerate(source.frames())]
    source.close()
    for start in range(0, len(frames), 3):
        events += engine.push(frames[start: start + 3])
        features = torch.cat(fed)
        expected = predictor.net.head(features[None])[0]  # pooling=last over all fed frames
        torch.testing.assert_close(engine.logits, expected, atol=1e-5, rtol=0)
    events += engine.finish()
    assert [(e["start_s"], e["end_s"]) for e in events] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert events[0]["label"] == "dark" and events[-1]["label"] == "bright" and engine.encoded == 8


def test_carry_refuses_heads_that_need_the_whole_clip(tmp_path: Path) -> None:
    ckpt = random_checkpoint(tmp_path / "bi.ckpt", ["model/head=bilstm", "data.image_size=32", "data.num_frames=4"])
    with pytest.raises(ValueError, match="state=carry cannot run this checkpoint: the head is bidirectional"):
        CarryEngine(Predictor.from_checkpoint(ckpt, device="cpu"), 10, 2, 1)


@pytest.mark.slow
def test_the_command_writes_jsonl_to_stdout_and_fails_clearly(brightness_checkpoint: Path, tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    write_mp4(video, brightness_clip(40, 30, 5), fps=FPS)
    base = [sys.executable, str(REPO / "scripts" / "stream.py"), f"ckpt_path={brightness_checkpoint}",
            f"paths.root_dir={tmp_path}", "window=1", "stride=1"]
    done = subprocess.run([*base, f"source={video}", "output=-"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["kind"], e["label"]) for e in lines] == [("window", "dark")] * 3 + [("segment", "dark")]
    assert "the stream ended. 30 frames" in done.stderr
    (tmp_path / "notes.mp4").write_text("not a video\n" * 100)
    failed = subprocess.run([*base, f"source={tmp_path / 'notes.mp4'}"], capture_output=True, text=True,
                            timeout=300)
    assert failed.returncode == 2 and "notes.mp4: not a video" in failed.stderr


@pytest.mark.slow
def test_the_stream_benchmark_prints_a_row_per_case(capsys: pytest.CaptureFixture) -> None:
    from vidlstm.cli.benchmark import main

    main(["stream", "--encoder", "tiny", "--size", "32", "--num-frames", "4", "--seconds", "2", "--fps", "10",
          "--width", "64", "--height", "48", "--window", "1", "--stride", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip().startswith("T=")]
    assert [r.split()[0] for r in rows] == ["T=4", "T=10", "T=4,"] and "state=carry" in out
    for row in rows:  # name, then: full-speed frames/s, RT factor, paced frames/s, encoded, dropped, lag p50, p95
        fast, factor, paced, encoded, dropped = (float(x) for x in row[30:].split()[:5])
        assert fast > 0 and factor == pytest.approx(fast / 10, rel=0.05) and paced > 0
        assert 0 < encoded <= 20 and dropped >= 0  # frames through the CNN (of 20), frames dropped
