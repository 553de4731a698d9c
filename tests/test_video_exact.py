"""Frame-exact every time, on streams whose packets and frames do not line up.

One reader per file reads the same index lists round after round (random, sorted, reversed, repeated, the last
frames, in a different interleaving each round, plus a fresh random list), so a backend that is right only from
a fresh state, or only sometimes, fails. Files: H.264 with B-frames, MPEG-4 part 2, MJPEG, VP8/VP9 (plain and
with hidden frames), a variable-frame-rate .mkv and one whose frames share timestamps, and files from the wild:
H.264 with B-frames in AVI, FLV, MPEG-TS (also with timestamps wrapping past 2^33) and fragmented MP4, HEVC with
B-frames, interlaced H.264, H.264 with intra refresh, WMV2 in ASF, AV1, H.264 that changes size mid-stream, raw
streams, MP4 without a sync-sample table, MP4/Matroska that start mid-GOP, open GOPs (H.264, MPEG-2), an MP4 cut
by stream copy (an edit list hides the frames before the cut) and one with a cover picture larger than the video.
The frame count is the number of frames that decode, the same in `probe()` and every backend; asking past it is
one error everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest

from vidlstm.data import probe as probe_module
from vidlstm.data.index import VideoRecord
from vidlstm.data.video import (
    AUTO_ORDER,
    BACKENDS,
    FrameOutOfRange,
    VideoDecodeError,
    VideoReader,
    available_backends,
    facts,
    open_video,
    probe,
    stream_facts,
)
from vidlstm.data.video.base import INDEX_MAPPING_BACKENDS
from vidlstm.data.video.facts import MATROSKA
from vidlstm.data.video.opencv import opencv_version

from .video_factory import (
    LONG_BITS,
    WILD_CODECS,
    WILD_CONTAINERS,
    _indexed_frames,
    backend_params,
    cover_art_mp4,
    decodable_frames,
    hidden_frames_webm,
    long_indexed_video,
    mid_gop_video,
    no_sync_table_mp4,
    raw_stream,
    read_index,
    size_change_video,
    stream_counts,
    tail_trimmed_mp4,
    trimmed_mp4,
    truncated_mp4,
    vfr_shared_pts_video,
    vfr_stretch_pts_ms,
    vfr_video,
    wild_video,
    write_video,
)

N = 120
ROUNDS = 20
LISTS = {
    "random": random.Random(0).sample(range(N), 16),
    "sorted": sorted(random.Random(1).sample(range(N), 12)),
    "reversed": list(range(N - 1, -1, -7)),
    "repeated": [5, 5, N - 1, 2, N - 1, 60, 0, 0, 60],
    "last": list(range(N - 6, N)),
    "around_keyframes": [11, 12, 13, 23, 24, 25, 36],
}
MAKERS: dict[str, Callable[[Path], Path]] = {
    "h264_bframes": lambda p: long_indexed_video(p, "h264_bframes", N),
    "mpeg4_avi": lambda p: long_indexed_video(p, "mpeg4_avi", N),
    "mjpeg_avi": lambda p: long_indexed_video(p, "mjpeg_avi", N),
    "vp9_webm": lambda p: long_indexed_video(p, "vp9_webm", N),
    "vp8_hidden": lambda p: hidden_frames_webm(p, "libvpx", N),
    "vp9_hidden": lambda p: hidden_frames_webm(p, "libvpx-vp9", N),
    "vfr_mkv": lambda p: vfr_video(p, N),
    "vfr_shared_pts": lambda p: vfr_shared_pts_video(p, N),
    **{name: lambda p, name=name: wild_video(p, name, N) for name in [*WILD_CONTAINERS, *WILD_CODECS]},
    **{name: lambda p, name=name: raw_stream(p, name, N) for name in ("h264_raw", "h263_raw")},
    "h264_no_sync_table": lambda p: no_sync_table_mp4(p, N),
    "h264_mid_gop": lambda p: mid_gop_video(p, ".mp4", N),
    "h264_mid_gop_mkv": lambda p: mid_gop_video(p, ".mkv", N),
    "h264_trimmed": lambda p: trimmed_mp4(p, N),
    "h264_trimmed_open_gop": lambda p: trimmed_mp4(p, N, open_gop=True),
    "h264_tail_trimmed": lambda p: tail_trimmed_mp4(p, N),
    "h264_cover_art": lambda p: cover_art_mp4(p, N),
}
IRREGULAR = ("vp8_hidden", "vfr_mkv", "vfr_shared_pts")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exact")
    return {name: make(folder / name) for name, make in MAKERS.items()}


def wrong_reads(reader: VideoReader, rounds: int = ROUNDS, limit: int = N) -> tuple[list[tuple], int]:
    """Read `LISTS` (indices below ``limit``) ``rounds`` times from ``reader``, in a new interleaving each round
    with a fresh random list among them; (the reads that came back wrong as (asked, got), reads made)."""
    lists = [kept for indices in LISTS.values() if (kept := [i for i in indices if i < limit])]
    wrong, reads = [], 0
    for r in range(rounds):
        rng = random.Random(1000 + r)
        order = [*lists, rng.sample(range(limit), 10)]
        rng.shuffle(order)
        for indices in order:
            got = [read_index(frame, LONG_BITS) for frame in reader.get_frames(indices)]
            reads += 1
            if got != indices:
                wrong.append([(a, g) for a, g in zip(indices, got, strict=True) if a != g][:4])
    return wrong, reads


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_one_reader_stays_exact_over_many_rounds(files: dict[str, Path], name: str, backend: str) -> None:
    path = files[name]
    reason = BACKENDS[backend].unsuitable_reason(stream_facts(path))
    if reason:  # refused pairs: see test_refusals_are_earned, test_index_mapping_backends_refuse_... and
        with pytest.raises(VideoDecodeError, match="decode"):  # test_missing_decoders_are_missing
            open_video(path, backend)
        return
    with open_video(path, backend) as reader:
        assert reader.num_frames == N
        wrong, reads = wrong_reads(reader)
    assert not wrong, f"{backend} on {name}: {len(wrong)} of {reads} reads wrong, e.g. (asked, got) {wrong[:3]}"


# (backend, file): pairs refused by the stream checks, forced past them to show the refusal is earned. Measured
# before the checks existed (500 reads each): decord wrong on 400 reads of vfr_shared_pts, torchcodec on 373; on
# vp8_hidden decord returns frames 8 early near the end and torchcodec is wrong on every read.
# Without a frame table (AVI, FLV, MPEG-TS, MPEG-PS, fragmented MP4) decord and torchcodec landed on other frames
# on 4 to 60 of 60 reads (torchcodec failed on MPEG-TS and MPEG-PS); decord on 21 of 60 reads of HEVC and 36 of 60
# of WMV2; OpenCV 5.0 returned stale images for interlaced frames (5.1 reads them right), and lost the last 6 frames
# of the MPEG-TS file after restarting by a seek to frame 0 (it restarts by opening the file anew now: exact).
# (torchcodec read WMV2 right: its refusal in ASF is a precaution, as ASF carries decoding times only.) With intra
# refresh (recovery points flagged as keyframes) both were wrong on 5 of 30 reads in MP4 and in Matroska. Raw H.263,
# every packet flagged as a keyframe: torchcodec wrong on 48 of 56 reads (decord cannot open it). MP4 without a
# sync-sample table: decord wrong on 48 of 56 reads (torchcodec right with FFmpeg 5.1, so not refused). Starting
# mid-GOP (3 P pictures before the first keyframe, dropped by the decoder): in Matroska torchcodec wrong on 48 of 56
# reads, decord failed; in MP4 both failed on every read (and the header's count, 123, was taken for 120 frames).
# Open GOPs (B-frames after a keyframe shown before it): decord wrong on 16 of 56 reads of x264 --open-gop in MP4
# and in Matroska, 41 of 56 of MPEG-2 in MP4 (torchcodec, PyAV and OpenCV right). MP4 edit lists that hide frames
# (a cut by stream copy hides the frames before the cut, a trim the last ones): decord counts the hidden frames
# (125 where 120 show); torchcodec 0.17 reads both right (test_one_reader_stays_exact), but not where the GOPs are
# open: wrong on 2 to 9 of 25 reads of H.264 (x264 --open-gop), HEVC (x265) and MPEG-2 cut by `ffmpeg -ss T -c copy`,
# 6 of 20 of h264_trimmed_open_gop (or it runs out of frames).
EARNED = [("decord", "vfr_shared_pts"), ("torchcodec", "vfr_shared_pts"), ("decord", "vp8_hidden"),
          ("torchcodec", "vp8_hidden"), ("decord", "hevc_mp4"), ("decord", "wmv2_asf"),
          *([("opencv", "h264_interlaced")] if "opencv" in available_backends() and opencv_version() < (5, 1) else []),
          ("decord", "mpeg2_ps"), ("torchcodec", "mpeg2_ps"), ("decord", "h264_intra_refresh"),
          ("torchcodec", "h264_intra_refresh"), ("torchcodec", "h263_raw"), ("decord", "h264_no_sync_table"),
          *[(backend, name) for name in ("h264_mid_gop", "h264_mid_gop_mkv") for backend in ("decord", "torchcodec")],
          ("decord", "h264_open_gop"), ("decord", "h264_open_gop_mkv"), ("decord", "mpeg2_open_gop"),
          *[(backend, "h264_trimmed_open_gop") for backend in ("decord", "torchcodec")], ("decord", "h264_trimmed"),
          ("decord", "h264_tail_trimmed"),
          *[(backend, name) for name in WILD_CONTAINERS for backend in ("decord", "torchcodec")]]


@pytest.mark.parametrize(("backend", "name"), [
    pytest.param(b, n, marks=pytest.mark.skipif(b not in available_backends(), reason=f"{b} cannot load here"))
    for b, n in EARNED])
def test_refusals_are_earned(files: dict[str, Path], backend: str, name: str) -> None:
    path = files[name]
    real = stream_facts(path)
    with pytest.raises(VideoDecodeError, match=f"(?i){backend} decodes .* wrongly"):
        open_video(path, backend)
    # What the backend believes: a steady progressive H.264 stream in a container with a frame table, one frame per
    # packet.
    disguised = dataclasses.replace(real, variable_frame_rate=False, num_packets=0, num_frames=real.num_packets,
                                    container=MATROSKA, interlaced=False, codec="h264", false_keyframes=0,
                                    no_sync_table=False, leading_non_keyframes=0, open_gop_keyframes=0,
                                    edit_list_hidden=0)
    try:
        opened = BACKENDS[backend](str(path), disguised)
    except Exception:  # a good file lost (torchcodec raises its own RuntimeError when constructed directly)
        return
    with opened as reader:
        try:
            wrong, reads = wrong_reads(reader, rounds=3, limit=real.num_frames)
        except VideoDecodeError:  # a good file lost
            return
        if wrong:
            return
        beyond = list(range(real.num_frames, real.num_packets))
        try:  # frames past the real end: repeated silently, or missing
            past_end = [read_index(f, LONG_BITS) for f in reader.get_frames(beyond)] if beyond else []
        except VideoDecodeError:
            return
    assert len(set(past_end)) < len(past_end), (
        f"{backend} read {name} right in {reads} reads and gave distinct frames past the end: drop the refusal")


def test_containers_without_a_frame_table_are_told_apart(files: dict[str, Path]) -> None:
    """What decides whether decord and torchcodec may map frame numbers: a container with a frame table (MP4 with
    its sample table, Matroska/WebM), or a stream of keyframes only (MJPEG in AVI)."""
    looked = {name: stream_facts(files[name]) for name in MAKERS}
    with_table = {n for n, f in looked.items() if f.indexes_frames}
    assert with_table == {"h264_bframes", "vp9_webm", "vp8_hidden", "vp9_hidden", "vfr_mkv", "vfr_shared_pts",
                          "hevc_mp4", "h264_interlaced", "h264_intra_refresh", "h264_no_sync_table", "h264_mid_gop",
                          "h264_mid_gop_mkv", "h264_open_gop", "h264_open_gop_mkv", "mpeg2_open_gop", "h264_trimmed",
                          "h264_trimmed_open_gop", "h264_tail_trimmed", "h264_cover_art"} | (
                              {"av1_mp4"} & set(MAKERS))
    assert {n for n, f in looked.items() if f.false_keyframes} == {"h264_intra_refresh", "h263_raw"}
    assert looked["h263_raw"].keyframe_packets == looked["h263_raw"].num_packets  # the flags the checks saw through
    assert {n for n, f in looked.items() if f.no_sync_table} == {"h264_no_sync_table"}
    assert {n: f.leading_non_keyframes for n, f in looked.items() if f.leading_non_keyframes} == {
        "h264_mid_gop": 3, "h264_mid_gop_mkv": 3}
    assert looked["h264_mid_gop"].header_frames == N + 3  # the header counts the dropped pictures as frames
    # a cut by stream copy starts at the keyframe its edit list hides: not begun mid-GOP; hidden frames are no frames,
    # and counting them needs no decode (the header counts them, the packets tell them apart)
    edited = {n: f for n, f in looked.items() if f.edit_list_hidden}
    assert set(edited) == {"h264_trimmed", "h264_tail_trimmed", "h264_trimmed_open_gop"}
    assert (edited["h264_trimmed"].edit_list_hidden, edited["h264_tail_trimmed"].edit_list_hidden) == (5, 6)
    for name, found in edited.items():
        assert (found.num_packets, found.num_frames, found.frames_counted) == (N, N, False), name
        assert found.header_frames == N + found.edit_list_hidden > N, name
    # the cover picture (larger than the video) is no video stream
    assert (looked["h264_cover_art"].stream_index, looked["h264_cover_art"].num_video_streams) == (0, 1)
    assert {n for n, f in looked.items() if f.intra_only} == {"mjpeg_avi"}
    # B-frames shown before the keyframe they follow: x264 --open-gop, x265 (CRA pictures), FFmpeg's MPEG-2 and
    # MPEG-4 Part 2 encoders; closed GOPs with B-frames (x264's default) are not
    assert {n for n, f in looked.items() if f.open_gop_keyframes} == {
        "h264_open_gop", "h264_open_gop_mkv", "mpeg2_open_gop", "mpeg2_ps", "mpeg4_avi", "hevc_mp4",
        "h264_trimmed_open_gop"}
    for fragmented in ("h264_fmp4", "h264_fmp4_hybrid"):  # told apart by the count: none, or the first fragment's
        assert looked[fragmented].container == looked["h264_bframes"].container
    assert looked["h264_fmp4"].header_frames == 0 and looked["h264_bframes"].header_frames == N
    assert 0 < looked["h264_fmp4_hybrid"].header_frames < looked["h264_fmp4_hybrid"].num_packets == N
    assert {n for n, f in looked.items() if f.interlaced} == {"h264_interlaced"}
    for backend in INDEX_MAPPING_BACKENDS:
        assert BACKENDS[backend].unsuitable_reason(looked["mjpeg_avi"]) is None
        for name in [*WILD_CONTAINERS, "wmv2_asf", "mpeg2_ps", "h264_raw"]:
            assert "frame table" in BACKENDS[backend].unsuitable_reason(looked[name]), (backend, name)


@pytest.mark.parametrize("backend", sorted(INDEX_MAPPING_BACKENDS))
def test_index_mapping_backends_refuse_variable_frame_rate(files: dict[str, Path], backend: str) -> None:
    """A refusal kept on the issue's measurement (decord off by one on 9 of 500 reads of a 25/50 fps .mkv), not
    reproduced on `vfr_mkv` (decord and torchcodec right on 500 reads each): variable frame rate alone refuses."""
    facts_ = stream_facts(files["vfr_mkv"])
    assert facts_.variable_frame_rate and not facts_.hidden_frames
    assert "variable-frame-rate" in BACKENDS[backend].unsuitable_reason(facts_)


@pytest.mark.parametrize(("version", "served"), [("0.16.0", False), ("0.17.0.dev20260701", False), ("", False),
                                                ("0.17.0", True), ("0.17.0+cu130", True), ("0.18.0rc1", True)])
def test_torchcodec_before_0_17_refuses_edit_lists(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                  version: str, served: bool) -> None:
    """torchcodec sought past the keyframe an edit list hides (torchcodec #1504, fixed for 0.17): releases (and
    development builds) before 0.17 are refused on files whose edit list hides frames, told by the version string
    (other files are served); 0.17 reads them right (test_one_reader_stays_exact, on this machine's release)."""
    from vidlstm.data.video import torchcodec as torchcodec_backend

    monkeypatch.setattr(torchcodec_backend, "_version", lambda: version)
    for name in ("h264_trimmed", "h264_tail_trimmed"):
        reason = BACKENDS["torchcodec"].unsuitable_reason(stream_facts(files[name]))
        assert (reason is None) == served, (name, reason)
        assert served or "MP4 edit list hides frames wrongly (it seeks past a hidden keyframe; needs >= 0.17" in reason
    assert BACKENDS["torchcodec"].unsuitable_reason(stream_facts(files["h264_bframes"])) is None


def test_a_hidden_open_gop_keyframe_is_an_open_gop(tmp_path: Path) -> None:
    """A short cut from an open-GOP stream: the only keyframe is the hidden one, its leading B-frames hidden too.
    It counts as an open GOP, so torchcodec is refused as on longer cuts, whatever the cut's length."""
    found = stream_facts(trimmed_mp4(tmp_path / "short", 8, cut=14, open_gop=True))
    assert (found.num_frames, found.keyframe_packets, found.open_gop_keyframes) == (8, 0, 1)
    assert found.edit_list_hidden == 5 and found.leading_non_keyframes == 0
    assert "open-GOP streams whose MP4 edit list" in BACKENDS["torchcodec"].unsuitable_reason(found)


@pytest.mark.parametrize("name", IRREGULAR)
def test_auto_serves_irregular_streams_with_an_exact_backend(files: dict[str, Path], name: str) -> None:
    with open_video(files[name]) as reader:
        assert reader.backend not in INDEX_MAPPING_BACKENDS
        assert reader.backend == probe(files[name]).backend
        wrong, reads = wrong_reads(reader, rounds=3)
    assert not wrong, f"auto ({reader.backend}) on {name}: {len(wrong)} of {reads} reads wrong"


@pytest.mark.skipif("av1_mp4" not in MAKERS, reason="this PyAV cannot encode AV1")
@pytest.mark.parametrize("backend", [
    pytest.param(b, marks=pytest.mark.skipif(b not in available_backends(), reason=f"{b} cannot load here"))
    for b in ("decord", "opencv")
    if b != "opencv" or "opencv" not in available_backends() or opencv_version() < (5, 1)])
def test_missing_decoders_are_missing(files: dict[str, Path], backend: str) -> None:
    """decord and OpenCV before 5.1 refuse AV1 by name; forced past the refusal they still cannot decode it (decord
    fails to open the stream, OpenCV delivers no frame). Should a release gain the decoder, this fails: drop the
    refusal (OpenCV 5.1 did; test_one_reader_stays_exact shows it exact)."""
    path = files["av1_mp4"]
    with pytest.raises(VideoDecodeError, match=f"{backend} cannot decode av1"):
        open_video(path, backend)
    disguised = dataclasses.replace(stream_facts(path), codec="h264")
    with pytest.raises(Exception), BACKENDS[backend](str(path), disguised) as reader:  # noqa: B017
        reader.get_frames([0, 5, 60])  # (decord, constructed directly, raises its own DECORDError)


@pytest.mark.skipif("av1_mp4" not in MAKERS, reason="this PyAV cannot encode AV1")
@pytest.mark.parametrize("order", [AUTO_ORDER, tuple(b for b in AUTO_ORDER if b != "torchcodec")],
                         ids=["default", "without_torchcodec"])
def test_auto_reads_av1_exactly_with_or_without_torchcodec(files: dict[str, Path], order: tuple[str, ...]) -> None:
    """AV1 (YouTube's codec): where torchcodec is missing, decord (no AV1 decoder) fails and `auto` moves on to
    an exact backend. The probe names the codec, not the decoder PyAV picked ("libdav1d"), and counts no frame
    (a temporal unit shows exactly one frame)."""
    path = files["av1_mp4"]
    looked = stream_facts(path)
    assert (looked.codec, looked.frames_counted, looked.num_frames) == ("av1", False, N)
    with open_video(path, "auto", order) as reader:
        wrong, reads = wrong_reads(reader, rounds=5)
        assert reader.backend in {"torchcodec", "pyav"} and reader.backend in order
    assert not wrong, f"auto ({reader.backend}) on AV1: {len(wrong)} of {reads} reads wrong"


def test_variable_frame_rate_is_detected(files: dict[str, Path]) -> None:
    assert stream_facts(files["vfr_mkv"]).variable_frame_rate
    assert stream_facts(files["vfr_shared_pts"]).variable_frame_rate
    for name in ("h264_bframes", "mpeg4_avi", "mjpeg_avi", "vp9_webm", "vp8_hidden", "vp9_hidden"):
        assert not stream_facts(files[name]).variable_frame_rate, name


def test_variable_frame_rate_alone_costs_no_decode(tmp_path: Path) -> None:
    """Phone videos are variable-frame-rate MP4: told from packet timestamps, counted from the header that agrees
    with the packets (a full decode at probe cost 5.5 s for 30 s of 1080p), and read exactly by PyAV."""
    path = write_video(tmp_path / "phone.mp4", _indexed_frames(N), "libx264", "yuv420p",
                       {"bf": "3", "g": "12", "crf": "18"}, pts_ms=vfr_stretch_pts_ms(N))
    found = stream_facts(path)
    assert found.variable_frame_rate and not found.frames_counted and found.num_frames == found.header_frames == N
    with open_video(path) as reader:
        assert reader.backend not in INDEX_MAPPING_BACKENDS
        wrong, reads = wrong_reads(reader, rounds=5)
    assert not wrong, f"{reader.backend}: {len(wrong)} of {reads} reads wrong, e.g. {wrong[:3]}"


@pytest.mark.parametrize(
    ("pts", "time_base", "uneven"),
    [
        ([round(i * 1000 / 29.97) for i in range(300)], Fraction(1, 1000), False),  # 33/34 ms: rounding
        ([round(round(i * 1000 / 29.97) * 90) for i in range(300)], Fraction(1, 90000), False),  # ms, then 1/90000
        ([round(round(i * 1000 / 60) * 15.36) for i in range(300)], Fraction(1, 15360), False),
        ([i * 3003 for i in range(300)], Fraction(1, 90000), False),
        ([i * 512 for i in range(300)][::-1], Fraction(1, 15360), False),  # order does not matter
        (vfr_stretch_pts_ms(120), Fraction(1, 1000), True),  # 25 and 50 fps
        ([*range(0, 400, 40), *range(440, 800, 40)], Fraction(1, 1000), True),  # one frame dropped
        ([0, 40, 80, 80, 120, 160], Fraction(1, 1000), True),  # a shared timestamp
        ([i * 3003 + (i % 3) * 150 for i in range(100)], Fraction(1, 90000), True),  # jitter of 1.7 ms
    ],
    ids=["ntsc_ms", "ntsc_ms_rescaled", "60fps_ms_rescaled", "ntsc_90k", "reversed", "stretches", "dropped",
         "shared", "jitter"],
)
def test_uneven_spacing_beyond_rounding(pts: list[int], time_base: Fraction, uneven: bool) -> None:
    assert facts.uneven(pts, time_base) is uneven


def test_hidden_frames_are_not_counted(files: dict[str, Path]) -> None:
    """The factory's VP8 file really hides frames in packets of their own; probe and every backend count the
    frames that decode, never the packets (before: 130 in probe and every reader; PyAV and OpenCV then failed on
    frames 120-129 and decord repeated frame 119)."""
    path = files["vp8_hidden"]
    assert stream_counts(path) == (N + 10, N)  # one hidden copy per keyframe (every 12th frame)
    found = stream_facts(path)
    assert (found.num_frames, found.num_packets, found.hidden_frames, found.frames_counted) == (N, N + 10, 10, True)
    assert probe(path).num_frames == N
    served = []
    for backend in available_backends():
        try:
            reader = open_video(path, backend)
        except VideoDecodeError as err:
            assert backend in INDEX_MAPPING_BACKENDS, err.reason
            continue
        with reader:
            assert reader.num_frames == N, backend
            served.append(backend)
    assert {"pyav", "opencv"} <= set(served)


def test_vp9_hidden_frames_ride_in_superframes(files: dict[str, Path]) -> None:
    """In WebM the VP9 hidden frames are bundled with the next frame (a superframe): packets equal frames, and
    the index-mapping backends are exact (checked by the round test)."""
    import av

    path = files["vp9_hidden"]
    with av.open(str(path)) as container:
        markers = [bytes(p)[-1] for p in container.demux(container.streams.video[0]) if p.size]
    assert sum(m & 0xE0 == 0xC0 for m in markers) == N // 12  # one superframe per keyframe
    assert stream_counts(path) == (N, N)
    assert stream_facts(path).hidden_frames == 0 and stream_facts(path).num_frames == N


@pytest.mark.parametrize("name", ["vp8_hidden", "h264_bframes", "vfr_mkv"])
def test_past_the_end_is_the_same_error_in_every_backend(files: dict[str, Path], name: str) -> None:
    path = files[name]
    for backend in available_backends():
        try:
            reader = open_video(path, backend)
        except VideoDecodeError:
            continue
        with reader:
            for asked in ([N], [N - 2, N - 1, N + 3], [-1, 4]):
                with pytest.raises(FrameOutOfRange, match=rf"frame -?\d+ requested, the video has {N} frames"):
                    reader.get_frames(asked)
            assert [read_index(f, LONG_BITS) for f in reader.get_frames([N - 1, 0])] == [N - 1, 0], backend
    assert issubclass(FrameOutOfRange, VideoDecodeError) and issubclass(FrameOutOfRange, IndexError)


def test_a_count_past_its_time_share_keeps_the_shown_packets(files: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream too long to count in its share of the probe's time limit keeps the count of packets that show a
    picture (VP8/VP9 headers say which), never the raw packet count."""
    monkeypatch.setattr(facts, "_FACTS", {})
    monkeypatch.setattr(facts, "_COUNTED", {})
    monkeypatch.setattr(facts, "COUNT_SHARE_OF_TIMEOUT", 1e-9)
    found = stream_facts(files["vp8_hidden"], timeout_s=60)
    assert (found.num_frames, found.frames_counted, found.hidden_frames) == (N, False, 10)


def test_probe_cache_keeps_the_count_and_hands_it_to_readers(files: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(files["vp8_hidden"])
    cache = tmp_path / "probe.json"
    monkeypatch.setattr(facts, "_FACTS", {})
    monkeypatch.setattr(facts, "_COUNTED", {})
    _, bad = probe_module.probe_records([VideoRecord(path, "a")], cache, workers=0)
    assert not bad
    stored = json.loads(cache.read_text())
    assert stored["version"] == probe_module.CACHE_VERSION == 9
    result = stored["entries"][path]["result"]
    assert result["num_frames"] == N and result["facts"]["frames_counted"] and result["facts"]["num_packets"] == N + 10

    # A fresh process (here: emptied caches) that reads the probe cache never decodes the stream to count again.
    monkeypatch.setattr(facts, "_FACTS", {})
    monkeypatch.setattr(facts, "_COUNTED", {})

    def no_counting(*args: object) -> None:
        raise AssertionError("counted again although the probe cache knew the count")

    monkeypatch.setattr(facts, "_count_decoded", no_counting)
    probe_module.probe_records([VideoRecord(path, "a")], cache, workers=0)
    with open_video(path) as reader:
        assert reader.num_frames == N


def test_a_probe_cache_of_the_old_version_is_probed_again(files: dict[str, Path], tmp_path: Path) -> None:
    """Version 1 stored packet counts (130 for the VP8 file): such a cache is ignored, never trusted."""
    path = str(files["vp8_hidden"])
    stat = Path(path).stat()
    cache = tmp_path / "probe.json"
    cache.write_text(json.dumps({"version": 1, "entries": {path: {"key": [stat.st_size, stat.st_mtime_ns], "result": {
        "num_frames": N + 10, "fps": 10.0, "height": 64, "width": 64, "backend": "decord", "error": None}}}}))
    probe_module.probe_records([VideoRecord(path, "a")], cache, workers=0)
    assert json.loads(cache.read_text())["entries"][path]["result"]["num_frames"] == N



@pytest.mark.parametrize("name", ["vp8_hidden", "vfr_shared_pts"])
def test_clips_never_reach_past_the_frames_that_decode(files: dict[str, Path], name: str) -> None:
    """Samplers take the reader's count: the last segment or a clip placed at the very end stays inside it."""
    from vidlstm.data.dataset import VideoClipDataset
    from vidlstm.data.sampling import DenseClipSampler, MultiClipSampler, UniformSegmentSampler

    record = VideoRecord(str(files[name]), "a")
    for sampler in (UniformSegmentSampler(16, offset=0.999), DenseClipSampler(8, 4, position=1.0),
                    MultiClipSampler(6, num_clips=3, clip="dense")):
        dataset = VideoClipDataset([record], ["a"], sampler, transform=lambda clip: clip)
        sample = dataset[0]
        assert sample.clip is not None and not sample.failures, (sampler, sample.failures)
        frames = sample.clip.reshape(-1, *sample.clip.shape[-3:])
        assert [read_index(f, LONG_BITS) for f in frames] == [i for clip in _as_clips(sampler(N)) for i in clip]


def _as_clips(sampled: list) -> list[list[int]]:
    return sampled if isinstance(sampled[0], list) else [sampled]


def test_a_truncated_file_keeps_every_frame_that_still_decodes(tmp_path: Path) -> None:
    """An MP4 cut mid-packet (index first, as an interrupted download leaves it): the frames before the cut decode,
    including the ones the decoder still holds for reordering when the cut packet fails. Probe counts them, PyAV
    reads each of them every time (with frame threads it lost the last two), OpenCV (which loses them) and the
    index-mapping backends (the header promises 120) are refused."""
    path = truncated_mp4(tmp_path / "cut")
    frames = decodable_frames(path)
    assert frames == list(range(len(frames))) and 20 < len(frames) < N
    found = stream_facts(path)
    assert found.undecodable_packets >= 1 and found.num_frames == len(frames) and found.header_frames == N
    with open_video(path) as reader:
        assert reader.backend == "pyav" and reader.num_frames == len(frames)
        wrong, reads = wrong_reads(reader, rounds=5, limit=len(frames))
        assert [read_index(f, LONG_BITS) for f in reader.get_frames([len(frames) - 1, len(frames) - 2])] == [
            len(frames) - 1, len(frames) - 2]
    assert not wrong, f"{len(wrong)} of {reads} reads wrong, e.g. {wrong[:3]}"
    for backend in ("opencv", *INDEX_MAPPING_BACKENDS):
        assert BACKENDS[backend].unsuitable_reason(found), backend


@pytest.mark.parametrize("suffix", [".ts", ".mkv"])
def test_a_stream_that_changes_size_comes_out_at_its_first_size(tmp_path: Path, suffix: str) -> None:
    """Concatenated recordings change size mid-stream (here 64x64, then 128x128 from frame 60). Every backend
    that serves the file hands over every frame at the first size, exact every round (PyAV failed on any clip
    spanning the change, which quarantined the MPEG-TS file: no other backend may read it); one that cannot
    (torchcodec) fails with a `VideoDecodeError`, which `auto` answers with the next backend."""
    path = size_change_video(tmp_path / "sizes", suffix, N)
    served = []
    for backend in available_backends():
        if BACKENDS[backend].unsuitable_reason(stream_facts(path)):
            continue
        with open_video(path, backend) as reader:
            assert reader.coded_size == (64, 64)
            try:
                shapes = {tuple(reader.get_frames(indices).shape[1:]) for indices in LISTS.values()}
                wrong, reads = wrong_reads(reader, rounds=5)
            except VideoDecodeError as err:
                assert backend == "torchcodec", f"{backend} failed: {err}"
                continue
        assert shapes == {(3, 64, 64)}, backend
        assert not wrong, f"{backend}: {len(wrong)} of {reads} reads wrong, e.g. {wrong[:3]}"
        served.append(backend)
    assert "pyav" in served
    with open_video(path) as reader:
        wrong, reads = wrong_reads(reader, rounds=5)
    assert not wrong, f"auto ({reader.backend}): {len(wrong)} of {reads} reads wrong"


def test_raw_h264_is_read_by_counting_and_goes_on_from_the_last_read(files: dict[str, Path]) -> None:
    """FFmpeg cannot seek in a raw H.264 stream (the probe used to fail on it with 'Operation not permitted'):
    PyAV counts frames from the start, and a later read goes on from where the last one stopped."""
    with open_video(files["h264_raw"], "pyav") as reader:
        assert reader.timeline is None
        assert [read_index(f, LONG_BITS) for f in reader.get_frames([10, 12])] == [10, 12]
        assert [read_index(f, LONG_BITS) for f in reader.get_frames([50])] == [50]
        assert (reader.decoded_frames, reader.seeks) == (51, 1)
        assert [read_index(f, LONG_BITS) for f in reader.get_frames([5])] == [5]  # behind: from the start again
        assert (reader.decoded_frames, reader.seeks) == (57, 2)
