"""PyAV and OpenCV seek to the keyframe before the wanted frames instead of decoding from frame 0, and stay exact:
one reader per file answers many mixed requests with the frames whose pixels spell the requested indices; a late
clip costs about one GOP plus its span (frames counted out of the decoder, not time); display rotation that PyAV
cannot read is refused instead of returned sideways."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vidlstm.data.video import VideoDecodeError, open_video, stream_facts
from vidlstm.data.video import timeline as tl
from vidlstm.data.video.opencv import OpenCVReader
from vidlstm.data.video.pyav import PyAVReader, _side_data_rotation, declared_rotation, frame_rotation

from .video_factory import index_frame as factory_index_frame
from .video_factory import read_index as factory_read_index
from .video_factory import set_mp4_rotation, write_video

N, GOP, BITS = 300, 30, 9  # frames, keyframe interval, bits of the index stripes (indices up to 511)
READERS = ["pyav", "opencv"]
CODECS = {  # name -> (suffix, codec, pixel format, options): a keyframe at least every GOP frames
    "h264_bframes": (".mp4", "libx264", "yuv420p", {"bf": "3", "g": str(GOP), "crf": "18"}),
    "h264_mkv": (".mkv", "libx264", "yuv420p", {"bf": "3", "g": str(GOP), "crf": "18"}),
    "mpeg4_avi": (".avi", "mpeg4", "yuv420p", {"qscale": "2", "bf": "2", "g": str(GOP)}),
    "vp9_webm": (".webm", "libvpx-vp9", "yuv420p", {"crf": "20", "b": "0", "g": str(GOP), "cpu-used": "8"}),
    "mjpeg_avi": (".avi", "mjpeg", "yuvj420p", {"qscale": "2"}),
}
VFR_MS = np.cumsum([0] + [40 if (i // 50) % 2 == 0 else 20 for i in range(N - 1)]).tolist()  # 25 and 50 fps


def index_frame(i: int, height: int = 64, width: int = 128) -> np.ndarray:
    """`video_factory.index_frame` with `BITS` stripes on a wider frame."""
    return factory_index_frame(i, height, width, BITS)


def read_index(frame: torch.Tensor) -> int:
    return factory_read_index(frame, BITS)


def _frames(noise: int = 0) -> np.ndarray:
    frames = np.stack([index_frame(i) for i in range(N)])
    if noise:  # incompressible detail, so that the file is large next to FFmpeg's read buffer
        jitter = np.random.default_rng(0).integers(-noise, noise, frames.shape)
        frames = np.clip(frames.astype(np.int16) + jitter, 0, 255).astype(np.uint8)
    return frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder, frames = tmp_path_factory.mktemp("seek"), _frames()
    files = {name: write_video(folder / f"{name}{suffix}", frames, codec, pix_fmt, options, fps=25)
             for name, (suffix, codec, pix_fmt, options) in CODECS.items()}
    files["vfr_mkv"] = write_video(folder / "vfr.mkv", frames, "libx264", "yuv420p",
                                   {"bf": "3", "g": str(GOP), "crf": "18"}, pts_ms=VFR_MS)
    return files


def _rounds(seed: int, rounds: int = 24) -> list[list[int]]:
    """Mixed request patterns: random, sorted, reversed, repeated, clips, interleaved early/late, far-apart runs."""
    rng, patterns = random.Random(seed), []
    for r in range(rounds):
        kind = r % 7
        if kind == 0:
            patterns.append(rng.sample(range(N), 16))
        elif kind == 1:
            patterns.append(sorted(rng.sample(range(N), 12)))
        elif kind == 2:
            start = rng.randrange(N - 40)
            patterns.append(list(range(start + 40, start, -3)))
        elif kind == 3:
            a, b = rng.randrange(N), rng.randrange(N)
            patterns.append([a, a, b, a, b, b])
        elif kind == 4:
            start = rng.randrange(N - 32)
            patterns.append(list(range(start, start + 32, 2)))
        elif kind == 5:
            early, late = rng.randrange(N // 3), rng.randrange(2 * N // 3, N - 8)
            pairs = zip(range(early, early + 8), range(late, late + 8), strict=True)
            patterns.append([i for pair in pairs for i in pair])
        else:
            patterns.append([*range(3, 7), *range(150, 153), N - 1])
    return patterns


@pytest.mark.parametrize("backend", READERS)
@pytest.mark.parametrize("codec", [*CODECS, "vfr_mkv"])
def test_one_reader_stays_exact_over_many_mixed_requests(videos: dict[str, Path], codec: str, backend: str) -> None:
    with open_video(videos[codec], backend) as reader:
        assert reader.num_frames == N
        for round_, indices in enumerate(_rounds(seed=len(codec))):
            got = [read_index(f) for f in reader.get_frames(indices)]
            assert got == indices, f"round {round_}"
        if backend == "pyav":
            assert reader.timeline is not None and reader.timeline.source == "packets" and reader.seeks > 0
        elif codec == "vfr_mkv":  # OpenCV's seek is exact only at a constant rate: refused, read forward
            assert "variable frame rate" in reader.seek_refused and reader.seeks == 0
        else:  # every OpenCV seek landed where the timestamps said it must (otherwise seeking turns itself off)
            assert reader.seek_refused is None and reader.seeks > 0


def _late_clip() -> list[int]:
    return np.linspace(N - N // 10, N - 1, 16).round().astype(int).tolist()  # 16 frames of the last 10%


@pytest.mark.parametrize("codec", [*CODECS, "vfr_mkv"])
def test_pyav_late_clip_decodes_about_one_gop_plus_its_span(videos: dict[str, Path], codec: str) -> None:
    clip = _late_clip()
    with open_video(videos[codec], "pyav") as reader:
        assert [read_index(f) for f in reader.get_frames(clip)] == clip
        keyframe = reader.timeline.keyframe_before(clip[0])
        assert clip[0] - keyframe < GOP
        assert reader.decoded_frames <= (clip[0] - keyframe) + (clip[-1] - clip[0] + 1)
        assert reader.decoded_frames <= GOP + clip[-1] - clip[0]


@pytest.mark.parametrize("codec", [*CODECS, "vfr_mkv"])
def test_pyav_far_apart_runs_seek_again(videos: dict[str, Path], codec: str) -> None:
    runs = [[4, 5, 6], [150, 151], [N - 2, N - 1]]
    with open_video(videos[codec], "pyav") as reader:
        indices = [i for run in runs for i in run]
        assert [read_index(f) for f in reader.get_frames(indices)] == indices
        timeline = reader.timeline
        bound = sum(run[-1] - timeline.keyframe_before(run[0]) + 1 for run in runs)
        assert reader.decoded_frames <= bound < N // 2
        assert reader.seeks == 3


@pytest.mark.parametrize("codec", [*CODECS])
def test_opencv_late_clip_grabs_only_its_span(videos: dict[str, Path], codec: str) -> None:
    clip = _late_clip()
    with open_video(videos[codec], "opencv") as reader:
        assert [read_index(f) for f in reader.get_frames(clip)] == clip
        assert reader.seeks == 1 and reader.decoded_frames == clip[-1] - clip[0] + 1


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs /proc/self/io to count bytes read")
@pytest.mark.parametrize("codec", ["h264_bframes", "mjpeg_avi"])
@pytest.mark.parametrize("backend", READERS)
def test_late_clip_reads_only_the_end_of_the_file(tmp_path: Path, codec: str, backend: str) -> None:
    """OpenCV decodes inside its own seek, where no counter reaches: the bytes it reads show where it started.
    The same reader told not to seek reads the whole file, which shows the measure works."""
    suffix, name, pix_fmt, options = CODECS[codec]
    path = write_video(tmp_path / f"noisy{suffix}", _frames(noise=60), name, pix_fmt, options, fps=25)
    size, clip = path.stat().st_size, _late_clip()
    assert size > 200_000

    def late_clip_bytes(seek: bool) -> int:
        with open_video(path, backend) as reader:
            reader.get_frames([0])  # opening, the packet table and the first frame are not what is measured
            if not seek:
                if backend == "opencv":
                    reader.seek_refused = "told not to seek"
                else:
                    reader._timeline = "told not to seek"
            before = _bytes_read()
            assert [read_index(f) for f in reader.get_frames(clip)] == clip
            return _bytes_read() - before

    assert late_clip_bytes(seek=True) < 0.4 * size
    assert late_clip_bytes(seek=False) > 0.8 * size


def test_pyav_rebuilds_a_timeline_the_decoder_contradicts(videos: dict[str, Path]) -> None:
    """A packet table with a frame that never decodes (as a hidden VP8 alt-ref frame would add) is replaced by the
    decoded frames' timestamps as soon as a read runs into the gap; reads stay exact."""
    path = videos["h264_bframes"]
    facts = stream_facts(path)
    with PyAVReader(str(path), facts) as honest:
        real = honest.timeline
    fake_pts = (int(real.pts[100]) + int(real.pts[101])) // 2
    lying = dataclasses.replace(real, pts=np.insert(real.pts, 101, fake_pts),
                                keys=np.where(real.keys > 100, real.keys + 1, real.keys))
    key = tl.cache_key(path, facts.stream_index)
    tl.remember(key, lying)
    try:
        with PyAVReader(str(path), dataclasses.replace(facts, num_frames=N + 1)) as reader:
            assert [read_index(f) for f in reader.get_frames([99, 100, 101])] == [99, 100, 101]
            assert reader.timeline.source == "decoded" and len(reader.timeline) == N
            assert [read_index(f) for f in reader.get_frames([250, 3, 120])] == [250, 3, 120]
    finally:
        tl.remember(key, real)


def test_pyav_counts_from_the_start_without_usable_timestamps(videos: dict[str, Path]) -> None:
    path = videos["mpeg4_avi"]
    key = tl.cache_key(path, stream_facts(path).stream_index)
    saved = tl.cached(key)
    tl.remember(key, "several frames share one timestamp")
    try:
        with open_video(path, "pyav") as reader:
            assert reader.timeline is None
            assert [read_index(f) for f in reader.get_frames([280, 7, 7, 150])] == [280, 7, 7, 150]
            assert reader.decoded_frames == 281
    finally:
        if saved is not None:
            tl.remember(key, saved)


def _vp9_header(profile: int, show_existing: int = 0, show: int = 1) -> int:
    bits = [1, 0, profile & 1, profile >> 1] + ([0] if profile == 3 else []) + [show_existing]
    bits += [0, 0, 0] if show_existing else [0, show]  # frame_to_show_map_idx, or frame_type and show_frame
    bits = (bits + [0] * 8)[:8]
    return int("".join(map(str, bits)), 2)


@pytest.mark.parametrize("profile", [0, 1, 2, 3])
def test_hidden_vp8_vp9_frames_are_left_out_of_the_timeline(profile: int) -> None:
    assert tl.shows_frame("vp8", memoryview(bytes([0b0001_0000, 0, 0])))
    assert not tl.shows_frame("vp8", memoryview(bytes([0b0000_0001, 0, 0])))
    shown, hidden = _vp9_header(profile), _vp9_header(profile, show=0)
    assert tl.shows_frame("vp9", memoryview(bytes([shown, 0x55])))
    assert not tl.shows_frame("vp9", memoryview(bytes([hidden, 0x55])))
    assert tl.shows_frame("vp9", memoryview(bytes([_vp9_header(profile, show_existing=1)])))
    marker = 0b1100_0001  # superframe index: one byte per size, two frames
    superframe = bytes([hidden, 0x55, 0x55, shown, 0x55]) + bytes([marker, 3, 2, marker])
    assert tl.shows_frame("vp9", memoryview(superframe))
    hidden_pair = bytes([hidden, 0x55, 0x55, hidden, 0x55]) + bytes([marker, 3, 2, marker])
    assert not tl.shows_frame("vp9", memoryview(hidden_pair))
    assert tl.shows_frame("h264", memoryview(bytes([0])))


def _small(n: int = 10) -> np.ndarray:
    return np.stack([index_frame(i, 48, 80) for i in range(n)])


@pytest.mark.parametrize("clockwise", [0, 90, 180, 270])
def test_mp4_track_header_rotation_is_read_from_the_file(tmp_path: Path, clockwise: int) -> None:
    path = write_video(tmp_path / "phone.mp4", _small())
    set_mp4_rotation(path, clockwise)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        declared = declared_rotation(path, container.format.name, stream)
        frame = next(container.decode(stream))
        assert declared == stream_facts(path).rotation == (-clockwise) % 360
        assert frame_rotation(frame, path) == declared
        assert _side_data_rotation(frame) in (None, float(declared), float(declared - 360))


def test_rotation_pyav_does_not_report_is_refused(tmp_path: Path) -> None:
    """What an older PyAV/FFmpeg gives (rotation 0) for a file whose track header turns it: refused, not sideways."""
    path = write_video(tmp_path / "phone.mp4", _small())
    set_mp4_rotation(path, 90)
    unrotated = dataclasses.replace(stream_facts(path), rotation=0)
    with pytest.raises(VideoDecodeError, match="declares a 270 degree display rotation"):
        PyAVReader(str(path), unrotated)
    with pytest.raises(VideoDecodeError, match="OpenCV would turn the frames by 270 degrees"):
        OpenCVReader(str(path), unrotated)
    with open_video(path, "pyav") as reader:
        assert reader.get_frames([3]).shape == (1, 3, 80, 48)


def test_rotation_that_is_not_a_quarter_turn_is_refused(tmp_path: Path) -> None:
    path = write_video(tmp_path / "tilted.mp4", _small())
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    matrix_at = at + 4 + 4 + (32 if data[at + 4] == 1 else 20) + 16
    cos, sin = round(math.cos(math.pi / 4) * 65536), round(math.sin(math.pi / 4) * 65536)
    values = [cos, sin, 0, -sin, cos, 0, 0, 0, 0x40000000]
    data[matrix_at: matrix_at + 36] = b"".join(v.to_bytes(4, "big", signed=True) for v in values)
    path.write_bytes(bytes(data))
    with av.open(str(path)) as container, pytest.raises(VideoDecodeError, match="only quarter turns"):
        declared_rotation(path, container.format.name, container.streams.video[0])
    for backend in READERS:
        with pytest.raises(VideoDecodeError):
            open_video(path, backend)
