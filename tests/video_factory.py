"""Small test videos whose frames encode their own index, in several codecs and containers."""

from __future__ import annotations

import io
import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vidlstm.data.video import BACKENDS, available_backends

BITS = 6  # frame indices up to 63


def backend_params() -> list:
    """Every backend as a pytest param, skipped where its library cannot load (torchcodec is optional)."""
    return [pytest.param(b, marks=pytest.mark.skipif(b not in available_backends(), reason=f"{b} cannot load here"))
            for b in BACKENDS]


def index_frame(i: int, height: int = 64, width: int = 64, bits: int = BITS) -> np.ndarray:
    """RGB frame whose ``bits`` vertical stripes spell ``i`` in binary (white = 1); a red bar marks the top."""
    frame = np.zeros((height, width, 3), np.uint8)
    edges = np.linspace(0, width, bits + 1).astype(int)
    for b in range(bits):
        if (i >> b) & 1:
            frame[height // 4 :, edges[b] : edges[b + 1]] = 255
    frame[: height // 8, :, 0] = 255
    return frame


def read_index(frame: torch.Tensor, bits: int = BITS) -> int:
    """Inverse of `index_frame` for a decoded (3, H, W) uint8 frame."""
    lum = frame.float().mean(0)[frame.shape[1] // 4 :]
    edges = np.linspace(0, frame.shape[2], bits + 1).astype(int)
    return sum(1 << b for b in range(bits) if lum[:, edges[b] + 1 : edges[b + 1] - 1].mean() > 127)


# name -> (file suffix, codec, pixel format, encoder options)
CODECS = {
    "h264_bframes": (".mp4", "libx264", "yuv420p", {"bf": "3", "g": "12", "crf": "18"}),
    "mpeg4_avi": (".avi", "mpeg4", "yuv420p", {"qscale": "2", "bf": "2", "g": "12"}),
    "vp9_webm": (".webm", "libvpx-vp9", "yuv420p", {"crf": "20", "b": "0", "g": "12"}),
    "mjpeg_avi": (".avi", "mjpeg", "yuvj420p", {"qscale": "2"}),
}


def write_video(path: Path, frames: np.ndarray, codec: str = "libx264", pix_fmt: str = "yuv420p",
                options: dict | None = None, fps: int = 10, pts_ms: list[int] | None = None,
                audio_first: bool = False, second_video: np.ndarray | None = None) -> Path:
    """Encode RGB ``frames`` (N, H, W, 3). ``pts_ms`` gives variable frame timing; ``audio_first`` adds a
    silent audio stream before the video stream; ``second_video`` adds another (smaller) video stream."""
    with av.open(str(path), "w") as container:
        audio = container.add_stream("aac", rate=16000) if audio_first else None
        streams = [(_video_stream(container, codec, pix_fmt, options, fps, frames, pts_ms), frames)]
        if second_video is not None:
            streams.append((_video_stream(container, codec, pix_fmt, options, fps, second_video, None), second_video))
        for stream, images in streams:
            for i, image in enumerate(images):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                if pts_ms is not None:
                    frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        if audio is not None:
            _mux_silence(container, audio)
    return path


def _mux_silence(container, stream) -> None:
    """One second of silence into an aac ``stream`` at 16 kHz."""
    silence = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
    silence.sample_rate = 16000
    for packet in [*stream.encode(silence), *stream.encode()]:
        container.mux(packet)


def write_audio_only(path: Path) -> Path:
    """An MP4 container with one silent audio stream and no video."""
    with av.open(str(path), "w", format="mp4") as container:
        _mux_silence(container, container.add_stream("aac", rate=16000))
    return path


def _video_stream(container, codec, pix_fmt, options, fps, frames, pts_ms):
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = pix_fmt
    stream.options = dict(options or {})
    if pts_ms is not None:
        stream.codec_context.time_base = Fraction(1, 1000)
    return stream


def indexed_video(path: Path, codec_name: str, num_frames: int = 40, height: int = 64, width: int = 64) -> Path:
    suffix, codec, pix_fmt, options = CODECS[codec_name]
    frames = np.stack([index_frame(i, height, width) for i in range(num_frames)])
    return write_video(path.with_suffix(suffix), frames, codec, pix_fmt, options)


def set_mp4_rotation(path: Path, degrees: int) -> None:
    """Rewrite the video track header's display matrix (tkhd) so players rotate by ``degrees`` clockwise."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    version = data[at + 4]
    matrix_at = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 2 + 2 + 2 + 2
    one, minus_one, w = 0x00010000, 0xFFFF0000, 0x40000000
    a, b, c, d = {90: (0, one, minus_one, 0), 180: (minus_one, 0, 0, minus_one), 270: (0, minus_one, one, 0),
                  0: (one, 0, 0, one)}[degrees]
    values = [a, b, 0, c, d, 0, 0, 0, w]
    data[matrix_at : matrix_at + 36] = b"".join(v.to_bytes(4, "big") for v in values)
    path.write_bytes(bytes(data))


# ---- streams whose packets and frames do not line up: variable frame rate, hidden frames -----------------------

LONG_BITS = 7  # stripes of the files below: frame indices up to 127


def _indexed_frames(num_frames: int, size: int = 64) -> np.ndarray:
    return np.stack([index_frame(i, size, size, LONG_BITS) for i in range(num_frames)])


def long_indexed_video(path: Path, codec_name: str, num_frames: int = 120) -> Path:
    """`indexed_video` with `LONG_BITS` stripes, for streams longer than 64 frames."""
    suffix, codec, pix_fmt, options = CODECS[codec_name]
    return write_video(path.with_suffix(suffix), _indexed_frames(num_frames), codec, pix_fmt, options)


def vfr_stretch_pts_ms(num_frames: int = 120, stretch: int = 20) -> list[int]:
    """Timestamps (ms) of ``stretch``-frame runs at 25 fps and 50 fps in turn."""
    pts, t = [], 0
    for i in range(num_frames):
        pts.append(t)
        t += 40 if (i // stretch) % 2 == 0 else 20
    return pts


def vfr_video(path: Path, num_frames: int = 120) -> Path:
    """H.264 .mkv with B-frames whose 25 fps and 50 fps stretches alternate; frames spell their index in
    `LONG_BITS` stripes."""
    return write_video(path.with_suffix(".mkv"), _indexed_frames(num_frames), "libx264", "yuv420p",
                       {"bf": "3", "g": "12", "crf": "18"}, pts_ms=vfr_stretch_pts_ms(num_frames))


def vfr_shared_pts_video(path: Path, num_frames: int = 120) -> Path:
    """The stretches of `vfr_video` stored at 25 fps timestamp precision (the encoder keeps its 1/25 s time base,
    as a muxer or recorder with too coarse a clock does): in the 50 fps stretches two neighbouring frames share a
    timestamp. A file decord reads wrongly every time."""
    frames = _indexed_frames(num_frames)
    with av.open(str(path.with_suffix(".mkv")), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.options = "yuv420p", {"bf": "3", "g": "12", "crf": "18"}
        for image, pts in zip(frames, vfr_stretch_pts_ms(num_frames), strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.with_suffix(".mkv")


def hidden_frames_webm(path: Path, codec: str = "libvpx", num_frames: int = 120, gop: int = 12) -> Path:
    """VP8 (``libvpx``) or VP9 (``libvpx-vp9``) .webm with hidden frames: packets that are decoded but never shown,
    as alt-ref frames are.

    PyAV's libvpx encodes alt-ref frames only in two-pass mode (one pass with auto-alt-ref=1, lag-in-frames=16 or
    25, arnr options or deadline=best gave none), and PyAV cannot hand the first pass's statistics to the second.
    So each keyframe is muxed a second time with its show_frame bit cleared: the decoder decodes it (restoring the
    state the keyframe set) and shows nothing. In VP8 the copy is a packet of its own (packets outnumber frames,
    like an alt-ref frame in WebM); in VP9 the WebM muxer bundles it with the next frame into a superframe, as
    libvpx's alt-ref frames are."""
    frames = _indexed_frames(num_frames)
    vp9 = codec == "libvpx-vp9"
    with av.open(str(path.with_suffix(".webm")), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.options = "yuv420p", {"g": str(gop), "crf": "10" if not vp9 else "20", "b": "1M"}
        encoded = [p for image in frames for p in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24"))]
        for packet in [*encoded, *stream.encode()]:
            hidden = _hidden_copy(packet, stream, vp9)
            if vp9 and hidden is not None:
                container.mux(hidden)  # before the frame it is bundled with
            container.mux(packet)
            if not vp9 and hidden is not None:
                container.mux(hidden)
    return path.with_suffix(".webm")


def _hidden_copy(packet: av.Packet, stream, vp9: bool) -> av.Packet | None:
    """For a keyframe packet, a copy with show_frame cleared (bit 4 of a VP8 frame tag, RFC 6386 9.1; bit 1 of
    a VP9 profile 0 header's first byte); None for other packets."""
    data = bytes(packet)
    if not (packet.is_keyframe if vp9 else not data[0] & 1):
        return None
    hidden = av.Packet(bytes([data[0] & ~(0x02 if vp9 else 0x10)]) + data[1:])
    hidden.pts, hidden.dts, hidden.time_base, hidden.stream = packet.pts, packet.dts, packet.time_base, stream
    return hidden


def stream_counts(path: Path) -> tuple[int, int]:
    """(non-empty packets, decoded frames) of the first video stream, read with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = sum(1 for packet in container.demux(stream) if packet.size)
        container.seek(0, stream=stream)
        return packets, sum(1 for _ in container.decode(stream))


# ---- containers and codecs from the wild: where frame numbers and timestamps part ways ----------------------------

# name -> (file suffix, codec, pixel format, encoder options) of streams encoded directly
_X264_OPEN_GOP = {"crf": "18", "bf": "3", "g": "12", "x264-params": "open-gop=1:scenecut=0"}
WILD_CODECS = {
    "hevc_mp4": (".mp4", "libx265", "yuv420p", {"crf": "18", "x265-params": "bframes=4:keyint=12:log-level=error"}),
    "h264_interlaced": (".mp4", "libx264", "yuv420p", {"crf": "18", "bf": "2", "g": "12", "flags": "+ildct+ilme",
                                                       "x264-params": "interlaced=1"}),
    "wmv2_asf": (".wmv", "wmv2", "yuv420p", {"g": "12", "b": "4M"}),
    "mpeg2_ps": (".mpg", "mpeg2video", "yuv420p", {"bf": "2", "g": "12", "b": "4M"}),  # MPEG program stream
    # recovery points flagged as keyframes although they are P pictures (low-latency streams, video calls)
    "h264_intra_refresh": (".mp4", "libx264", "yuv420p", {"crf": "18", "bf": "0",
                                                          "x264-params": "intra-refresh=1:keyint=30"}),
    # open GOPs: a keyframe followed (in decoding order) by B-frames shown before it, which reference the GOP
    # before (x264 --open-gop, as broadcast and Blu-ray encodes use it; FFmpeg's MPEG-2 encoder by default)
    "h264_open_gop": (".mp4", "libx264", "yuv420p", _X264_OPEN_GOP),
    "h264_open_gop_mkv": (".mkv", "libx264", "yuv420p", _X264_OPEN_GOP),
    "mpeg2_open_gop": (".mp4", "mpeg2video", "yuv420p", {"bf": "2", "g": "12", "qscale": "2"}),
    # AV1 (SVT-AV1, hidden reference frames inside each temporal unit): what YouTube and newer downloads carry
    "av1_mp4": (".mp4", "libsvtav1", "yuv420p", {"g": "12", "crf": "30"}),
}
if "libsvtav1" not in av.codecs_available:  # a PyAV built without the SVT-AV1 encoder
    del WILD_CODECS["av1_mp4"]
# name -> file suffix of the `long_indexed_video` H.264 stream (B-frames) written into other containers
WILD_CONTAINERS = {
    "h264_avi": ".avi",  # AVI keeps no presentation times: the demuxer guesses them
    "h264_flv": ".flv",
    "h264_ts": ".ts",
    "h264_ts_wrap": ".ts",  # timestamps wrap past 2^33 mid-file (a recording's clock): FFmpeg starts it below 0
    "h264_fmp4": ".mp4",  # fragmented MP4 (moov without samples, then fragments): no frame table
    "h264_fmp4_hybrid": ".mp4",  # fragmented MP4 whose moov holds the first fragment's samples only
}


def wild_video(path: Path, name: str, num_frames: int = 120) -> Path:
    """A `WILD_CODECS` or `WILD_CONTAINERS` file whose frames spell their index in `LONG_BITS` stripes."""
    if name in WILD_CODECS:
        suffix, codec, pix_fmt, options = WILD_CODECS[name]
        return write_video(path.with_suffix(suffix), _indexed_frames(num_frames), codec, pix_fmt, options)
    if name == "h264_ts_wrap":
        plain = wild_video(path.with_name(path.name + "_plain"), "h264_ts", num_frames)
        return _remux(plain, path.with_suffix(".ts"), {"avoid_negative_ts": "disabled"}, "mpegts",
                      shift=2**33 - 6 * 90_000)
    if name not in ("h264_fmp4", "h264_fmp4_hybrid"):
        _, codec, pix_fmt, options = CODECS["h264_bframes"]
        return write_video(path.with_suffix(WILD_CONTAINERS[name]), _indexed_frames(num_frames), codec, pix_fmt,
                           options)
    source = long_indexed_video(path.with_name(path.name + "_source"), "h264_bframes", num_frames)
    flags = "frag_keyframe+empty_moov" if name == "h264_fmp4" else "frag_keyframe"
    return _remux(source, path.with_suffix(".mp4"), {"movflags": flags})


def _remux(source: Path, path: Path, options: dict[str, str], format: str = "mp4", shift: int = 0,
           all_keyframes: bool = False, first_packet: int = 0) -> Path:
    """Copy the video stream of ``source`` into ``path`` (``format``) with these muxer options, its timestamps
    moved by ``shift`` ticks (MPEG-TS keeps 33 bits of them: a shift near 2^33 makes them wrap), every packet
    flagged as a keyframe if ``all_keyframes``, the packets before ``first_packet`` (in decoding order) left out."""
    options = {"avoid_negative_ts": "make_zero", **options}  # as the ffmpeg tool does: B-frames start below 0
    with av.open(str(source)) as inside, av.open(str(path), "w", format=format, options=options) as outside:
        stream = inside.streams.video[0]
        copy = outside.add_stream_from_template(stream)
        packets = (p for p in inside.demux(stream) if p.dts is not None)  # (None: the end-of-stream marker)
        for packet in itertools.islice(packets, first_packet, None):
            packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
            packet.is_keyframe = packet.is_keyframe or all_keyframes
            packet.stream = copy
            outside.mux(packet)
    return path


def no_sync_table_mp4(path: Path, num_frames: int = 120) -> Path:
    """The `long_indexed_video` H.264 stream (B-frames) muxed with every packet flagged as a keyframe, as careless
    recorders do: the MP4 track gets no sync-sample table (stss), and by the format every frame is a keyframe."""
    source = long_indexed_video(path.with_name(path.name + "_source"), "h264_bframes", num_frames)
    return _remux(source, path.with_suffix(".mp4"), {}, all_keyframes=True)


def mid_gop_video(path: Path, suffix: str = ".mp4", num_frames: int = 120, gop: int = 12, orphans: int = 3
                  ) -> Path:
    """An MP4 or Matroska file (``suffix``) that starts mid-GOP, as a camera recorder that begins writing at the
    first packet it receives, or a cut by stream copy, leaves it: H.264 (P-frames, a keyframe every ``gop``
    frames) whose first GOP is missing but for its last ``orphans`` packets, P pictures whose references are gone
    (the decoder drops them). The header counts them as frames, as many as the packets. Frames from the second
    keyframe on decode, and they spell their index among the frames that decode: 0 to ``num_frames`` - 1."""
    frames = np.stack([index_frame(max(i - gop, 0), 64, 64, LONG_BITS) for i in range(num_frames + gop)])
    source = write_video(path.with_name(path.name + "_source.mp4"), frames, "libx264", "yuv420p",
                         {"crf": "18", "bf": "0", "g": str(gop), "x264-params": "scenecut=0"})
    # no B-frames and no scene cuts: packet ``gop`` is the second keyframe
    return _remux(source, path.with_suffix(suffix), {}, "mp4" if suffix == ".mp4" else "matroska",
                  first_packet=gop - orphans)


def trimmed_mp4(path: Path, num_frames: int = 120, cut: int = 17, open_gop: bool = False) -> Path:
    """An MP4 cut by stream copy mid-GOP, as ``ffmpeg -ss T -i in.mp4 -c copy`` writes it: H.264 (B-frames, a
    keyframe every 12 frames; open GOPs if ``open_gop``) from the keyframe before frame ``cut`` on, timestamps
    moved so that frame ``cut`` shows at 0, and an edit list that hides the frames before it (decoded as
    references, never shown; the header counts them). The frames that show spell their index among them: 0 to
    ``num_frames`` - 1; the hidden ones 0."""
    frames = np.stack([index_frame(max(i - cut, 0), 64, 64, LONG_BITS) for i in range(num_frames + cut)])
    _, codec, pix_fmt, options = CODECS["h264_bframes"]
    options = _X264_OPEN_GOP if open_gop else {**options, "x264-params": "scenecut=0"}
    source = write_video(path.with_name(path.name + "_source.mp4"), frames, codec, pix_fmt, options)
    with av.open(str(source)) as inside:
        packets = [p for p in inside.demux(video=0) if p.dts is not None]
    cut_pts = sorted(p.pts for p in packets)[cut]
    start = max(i for i, p in enumerate(packets) if p.is_keyframe and p.pts <= cut_pts)
    return _remux(source, path.with_suffix(".mp4"), {"avoid_negative_ts": "disabled"}, shift=-cut_pts,
                  first_packet=start)


def tail_trimmed_mp4(path: Path, num_frames: int = 120, hidden: int = 6) -> Path:
    """The `long_indexed_video` H.264 stream (B-frames) of ``num_frames`` + ``hidden`` frames in an MP4 whose edit
    list ends ``hidden`` frames early, as editors that trim without re-encoding write it: the last frames are in
    the file and decoded as references, never shown. (The edit list's segment duration is patched in place.)"""
    source = long_indexed_video(path.with_name(path.name + "_source"), "h264_bframes", num_frames + hidden)
    data = bytearray(source.read_bytes())
    mvhd, elst = data.index(b"mvhd"), data.index(b"elst")
    assert data[mvhd + 4] == data[elst + 4] == 0 and data[elst + 8: elst + 12] == b"\0\0\0\1"  # version 0, 1 edit
    timescale = int.from_bytes(data[mvhd + 16: mvhd + 20], "big")
    data[elst + 12: elst + 16] = (num_frames * timescale // 10).to_bytes(4, "big")  # 10 fps (`write_video`)
    path.with_suffix(".mp4").write_bytes(bytes(data))
    return path.with_suffix(".mp4")


def cover_art_mp4(path: Path, num_frames: int = 120) -> Path:
    """The `long_indexed_video` H.264 stream (B-frames) in an MP4 with a cover picture four times the video's area
    (a PNG flagged as an attached picture, which FFmpeg shows as a second video stream), as downloaders that embed
    a thumbnail write it."""
    from PIL import Image

    source = long_indexed_video(path.with_name(path.name + "_source"), "h264_bframes", num_frames)
    picture = io.BytesIO()
    Image.new("RGB", (128, 128), (200, 30, 30)).save(picture, format="PNG")
    with av.open(str(source)) as inside, av.open(str(path.with_suffix(".mp4")), "w") as outside:
        video = inside.streams.video[0]
        cover = outside.add_stream("png")
        cover.width = cover.height = 128
        cover.pix_fmt, cover.disposition = "rgb24", av.stream.Disposition.attached_pic
        copy = outside.add_stream_from_template(video)
        packet = av.Packet(picture.getvalue())
        packet.stream, packet.pts, packet.dts, packet.time_base = cover, 0, 0, Fraction(1, 90_000)
        outside.mux(packet)
        for packet in inside.demux(video):
            if packet.dts is not None:
                packet.stream = copy
                outside.mux(packet)
    return path.with_suffix(".mp4")


def raw_stream(path: Path, name: str, num_frames: int = 120) -> Path:
    """A video stream without a container, as cameras write it. "h264_raw": Annex B H.264 with B-frames (a
    Raspberry Pi's .h264): no timestamps, and FFmpeg cannot seek in it. "h263_raw": 176x144 H.263, whose every
    packet FFmpeg flags as a keyframe although most are P pictures."""
    if name == "h264_raw":
        _, codec, pix_fmt, options = CODECS["h264_bframes"]
        return write_video(path.with_suffix(".h264"), _indexed_frames(num_frames), codec, pix_fmt, options)
    frames = np.stack([index_frame(i, 144, 176, LONG_BITS) for i in range(num_frames)])
    return write_video(path.with_suffix(".h263"), frames, "h263", "yuv420p", {"g": "12", "b": "1M"})


def truncated_mp4(path: Path, num_frames: int = 120, keep: float = 0.6) -> Path:
    """The `long_indexed_video` H.264 stream (B-frames) in an MP4 whose index comes first (faststart), cut after
    ``keep`` of its bytes, as an interrupted download or copy leaves it: the header promises every frame, the last
    packet is cut in the middle."""
    source = long_indexed_video(path.with_name(path.name + "_source"), "h264_bframes", num_frames)
    whole = _remux(source, path.with_name(path.name + "_whole.mp4"), {"movflags": "faststart"})
    data = whole.read_bytes()
    path.with_suffix(".mp4").write_bytes(data[: int(len(data) * keep)])
    return path.with_suffix(".mp4")


def decodable_frames(path: Path) -> list[int]:
    """The index each frame spells, of every frame that decodes: one decoder thread, each packet sent on its own
    (one that fails is skipped), the decoder flushed at the end -- all the frames the file still has."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        for packet in [*container.demux(stream), None]:
            if packet is not None and not packet.size:
                continue
            try:
                frames += stream.codec_context.decode(packet)
            except av.error.InvalidDataError:
                continue
    return [read_index(torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1), LONG_BITS) for f in frames]


def size_change_video(path: Path, suffix: str, num_frames: int = 120, change_at: int = 60) -> Path:
    """H.264 (B-frames) whose frames spell their index and whose size changes mid-stream, as concatenated
    recordings have it: 64x64 up to ``change_at``, then 128x128 (each stripe twice as wide), in an MPEG-TS
    (``suffix`` ".ts") or Matroska (".mkv") file."""
    frames = _indexed_frames(num_frames)
    _, codec, pix_fmt, options = CODECS["h264_bframes"]
    parts = [write_video(path.with_name(f"{path.name}_part{i}.ts"), images, codec, pix_fmt, options)
             for i, images in enumerate([frames[:change_at], frames[change_at:].repeat(2, axis=1).repeat(2, axis=2)])]
    with av.open(str(parts[0])) as first, av.open(str(path.with_suffix(suffix)), "w") as out:
        template = first.streams.video[0]
        copy = out.add_stream_from_template(template)
        step = round(1 / (template.average_rate * template.time_base))  # one frame in the stream's time base
        shift = 0
        for part in parts:
            with av.open(str(part)) as inside:
                packets = [p for p in inside.demux(video=0) if p.dts is not None]
                start = min(p.dts for p in packets)
                for packet in packets:  # each part's timestamps follow on from the last part's
                    packet.pts, packet.dts = packet.pts - start + shift, packet.dts - start + shift
                    packet.stream = copy
                    out.mux(packet)
                shift += len(packets) * step
    return path.with_suffix(suffix)
