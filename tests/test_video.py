"""Readers: exact frames in the requested order, agreement between backends, clear errors on bad files."""

from __future__ import annotations

import gc
import gzip
import io
import os
import signal
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vidlstm.data.synthetic import write_mp4
from vidlstm.data.video import BACKENDS, VideoDecodeError, available_backends, open_video, probe

from .video_factory import backend_params

NUM_FRAMES = 24


def _index_frame(i: int, size: int = 64) -> np.ndarray:
    """A frame whose 8 vertical stripes spell the binary frame index (white = 1)."""
    bits = [(i >> b) & 1 for b in range(8)]
    row = np.repeat(np.array(bits, np.uint8) * 255, size // 8)
    return np.repeat(np.repeat(row[None, :, None], size, axis=0), 3, axis=2)


def _read_index(frame: torch.Tensor) -> int:
    stripes = frame.float().mean(dim=(0, 1)).view(8, -1).mean(dim=1)
    return sum(1 << b for b, level in enumerate(stripes.tolist()) if level > 127)


@pytest.fixture(scope="module")
def indexed_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("videos") / "indexed.mp4"
    write_mp4(path, np.stack([_index_frame(i) for i in range(NUM_FRAMES)]), fps=10, crf=18)
    return path


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize(
    "indices", [list(range(NUM_FRAMES)), [17, 3, 9, 0], [23, 22, 1], [5, 5, 2, 5]], ids=str
)
def test_get_frames_returns_exactly_the_requested_frames(indexed_mp4: Path, backend: str, indices) -> None:
    with open_video(indexed_mp4, backend) as reader:
        assert reader.backend == backend
        assert (reader.num_frames, reader.height, reader.width) == (NUM_FRAMES, 64, 64)
        assert reader.fps == pytest.approx(10.0)
        frames = reader.get_frames(indices)
    assert frames.dtype == torch.uint8 and frames.shape == (len(indices), 3, 64, 64)
    assert [_read_index(f) for f in frames] == indices


def test_backends_decode_identical_pixels(indexed_mp4: Path) -> None:
    decoded = [open_video(indexed_mp4, b).get_frames([0, 11, 23]) for b in available_backends()]
    assert len(decoded) >= 3
    for other in decoded[1:]:
        assert torch.equal(decoded[0], other)


def test_out_of_range_index_is_rejected(indexed_mp4: Path) -> None:
    with open_video(indexed_mp4) as reader, pytest.raises(IndexError, match="outside"):
        reader.get_frames([0, NUM_FRAMES])


def test_probe_reports_metadata(indexed_mp4: Path) -> None:
    info = probe(indexed_mp4)
    assert (info.num_frames, info.height, info.width) == (NUM_FRAMES, 64, 64)
    assert info.duration_s == pytest.approx(2.4)
    assert info.backend in BACKENDS


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("clip.mp4", b"\0" * 1000)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [("missing.mp4", None, "no such file"), ("empty.mp4", b"", "empty file"),
     ("notes.mp4", b"these are my holiday notes, not a video\n" * 20, "not a readable media file: it is text"),
     ("page.mp4", b"\n<!DOCTYPE html><html><head><title>403 Forbidden</title></head></html>\n",
      "not a readable media file: it is an HTML page"),
     ("unicode_page.mp4", "\ufeff<html>".encode() + "Zugriff verweigert \u2014 ".encode() * 40,
      "it is an HTML page"),
     ("archive.mp4", _zip_bytes(), "not a readable media file: it is a ZIP archive"),
     ("packed.mp4", gzip.compress(b"\0" * 1000, mtime=0), "it is a gzip archive"),
     ("paper.mp4", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + b"1 0 obj\n" * 50, "it is a PDF document"),
     ("feed.mp4", b'<?xml version="1.0"?>\n<rss><channel/></rss>\n' * 10, "it is an XML document"),
     ("commented_page.mp4", b"<!-- cached -->\n<HTML><body>Not Found</body></HTML>\n", "it is an HTML page"),
     ("lfs.mp4", b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 123\n",
      "it is a Git LFS pointer"),
     ("meta.mp4", b'{"id": "abc", "title": "a video"}\n', "it is JSON text"),
     # FFmpeg opens these two as lyrics (lrc): no video stream, and the reason still says what they are
     ("log.mp4", b"[2024-05-01 12:00:01] ERROR download failed\n" * 20, "no video stream: it is text"),
     ("list.mp4", b'[{"id": 1, "label": "a"}, {"id": 2}]\n', "no video stream: it is text"),
     ("noise.mp4", bytes(np.random.default_rng(0).integers(1, 256, 4000, dtype=np.uint8)),
      r"not a readable media file \(")],
)
def test_bad_files_raise_decode_error_naming_the_path(tmp_path: Path, name: str, content, reason: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match=reason) as caught:
        open_video(path)
    assert caught.value.path == str(path) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_mp4_cut_before_its_index_is_named_so(tmp_path: Path, indexed_mp4: Path) -> None:
    """An interrupted recording or copy: the index (moov box, written last by default) is missing."""
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(indexed_mp4.read_bytes()[: indexed_mp4.stat().st_size // 2])
    with pytest.raises(VideoDecodeError, match=r"it is an MP4/MOV file without its index \(no moov box"):
        open_video(cut)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "GIF"])
def test_a_still_image_under_a_video_name_is_refused(tmp_path: Path, image_format: str) -> None:
    from PIL import Image

    path = tmp_path / "thumbnail.mp4"
    Image.new("RGB", (32, 24), (200, 30, 30)).save(path, format=image_format)
    with pytest.raises(VideoDecodeError, match=rf"a still image \({image_format}\), not a video"):
        probe(path)


@pytest.mark.parametrize(("brand", "shown"), [(b"avif", "AVIF"), (b"heic", "HEIC"), (b"mif1", "HEIF")])
def test_an_avif_or_heif_photo_under_a_video_name_is_refused(tmp_path: Path, brand: bytes, shown: str) -> None:
    """AVIF and HEIF photos open with FFmpeg's MP4 demuxer as one AV1 (HEVC) frame: their ftyp brand tells. (A
    HEIF photo is made here by giving an AVIF file HEIF's brand: FFmpeg reads it the same way.)"""
    import av

    if "libsvtav1" not in av.codecs_available:
        pytest.skip("this PyAV cannot encode AV1")
    path = tmp_path / "photo.mp4"
    with av.open(str(path), "w", format="avif") as container:
        stream = container.add_stream("libsvtav1", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        frame = av.VideoFrame.from_ndarray(_index_frame(3), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    data = bytearray(path.read_bytes())
    assert data[4:12] == b"ftypavif"
    size = int.from_bytes(data[:4], "big")
    data[8:size] = data[8:size].replace(b"avif", brand)
    path.write_bytes(bytes(data))
    with pytest.raises(VideoDecodeError, match=rf"a still image \({shown}\), not a video"):
        probe(path)


def test_an_animated_gif_is_still_a_video(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "animated.gif"
    frames = [Image.fromarray(_index_frame(i)) for i in range(6)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with open_video(path, "pyav") as reader:
        assert reader.num_frames == 6
        assert [_read_index(f) for f in reader.get_frames([5, 0, 3])] == [5, 0, 3]


def test_unknown_backend_is_a_clear_error(indexed_mp4: Path) -> None:
    with pytest.raises(ValueError, match="unknown video backend 'ffmpeg-cli'"):
        open_video(indexed_mp4, "ffmpeg-cli")


def test_a_hanging_decode_times_out_with_the_path(indexed_mp4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from vidlstm.data.video import PyAVReader

    monkeypatch.setattr(PyAVReader, "_decode_sorted_unique", lambda self, indices: time.sleep(30))
    started = time.perf_counter()
    with (open_video(indexed_mp4, "pyav", timeout_s=0.5) as reader,
          pytest.raises(VideoDecodeError, match=r"took longer than 0\.5 s \(timeout\)") as caught):
        reader.get_frames([0])
    assert time.perf_counter() - started < 5 and caught.value.path == str(indexed_mp4)


def test_a_native_decoder_stuck_in_one_call_is_abandoned_and_avoided(
        indexed_mp4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """decord #373: one get_batch call that never returns. A signal cannot stop it; the deadline still holds,
    the reader is retired and `auto` serves the same file from the next backend."""
    import threading
    import time

    from vidlstm.data.video import DecodeStuck, DecordReader, backend_available, deadlines

    if not backend_available("decord"):
        pytest.skip("decord is not installed here")
    monkeypatch.setattr(deadlines, "_STUCK", set())  # read at call time by `_limited` and `_stuck_before`
    release = threading.Event()
    calls = []

    def never_returns(self: DecordReader, indices: list[int]) -> torch.Tensor:
        calls.append(threading.current_thread().name)
        release.wait(60)  # blocks outside the interpreter, like a native loop; SIGALRM cannot reach it here
        raise RuntimeError("released by the test")

    monkeypatch.setattr(DecordReader, "_decode_sorted_unique", never_returns)
    try:
        reader = open_video(indexed_mp4, "decord", timeout_s=0.5)
        started = time.perf_counter()
        with pytest.raises(DecodeStuck, match=r"took longer than 0\.5 s \(timeout\); the decoder thread"):
            reader.get_frames([3, 1])
        assert time.perf_counter() - started < 5
        with pytest.raises(VideoDecodeError, match="still stuck in an earlier call"):
            reader.get_frames([0])
        assert len(calls) == 1, "a stuck reader must not be called again"
        with open_video(indexed_mp4, "auto", order=("decord", "pyav"), timeout_s=0.5) as fallback:
            assert fallback.backend == "pyav"
            assert [_read_index(f) for f in fallback.get_frames([3, 1])] == [3, 1]
    finally:
        release.set()


def test_native_decoders_return_the_same_frames_through_the_deadline_thread(indexed_mp4: Path) -> None:
    from vidlstm.data.video import call_with_deadline

    natives = [name for name in available_backends() if BACKENDS[name].native]
    for name in natives:
        with open_video(indexed_mp4, name, timeout_s=5) as reader:
            assert [_read_index(f) for f in reader.get_frames([7, 2, 7])] == [7, 2, 7]
    with pytest.raises(ZeroDivisionError):  # errors raised in the thread reach the caller unchanged
        call_with_deadline(lambda: 1 / 0, 5, indexed_mp4, "dividing")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_closed_pyav_reader_left_in_a_reference_cycle_does_not_crash_a_forked_worker(tmp_path: Path) -> None:
    """A reader that only a garbage collection frees (caught in a cycle, as an exception's traceback catches it)
    keeps its decoder; a DataLoader worker forked meanwhile freed it at its first collection without the decoder's
    threads and died of a segmentation fault (a prediction run on non-UTF-8 file names) or hung. A closed reader
    now lets go of its decoder, and a forked child leaves what it inherits out of its collections: here the
    reader is left open, as garbage from anywhere in the parent may be."""
    path = tmp_path / "v.mp4"
    write_mp4(path, np.zeros((24, 64, 64, 3), np.uint8), fps=8)
    gc.disable()  # the cycle must survive until the fork, as it does between two collections
    try:
        reader = open_video(path, "pyav")
        reader.get_frames([3, 20])  # the decoder runs (with frame threads where there are cores)
        reader.cycle = reader
        del reader
        pid = os.fork()
        if pid == 0:  # the worker: its first collection frees the inherited reader
            gc.collect()
            os._exit(0)
        status = None
        for _ in range(600):  # 30 s: freeing the decoder there may also hang (joining threads that do not exist)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked process hung freeing the reader")
    finally:
        gc.enable()
        gc.collect()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the forked process died: status {status}"
