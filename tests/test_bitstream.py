"""Keyframe-flagged packets that hold P/B pictures (intra refresh) are told apart from real ones by their first
bytes: hand-made H.264 and HEVC NAL units in both packagings, and a real x264 intra-refresh stream."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from vidlstm.data.video import open_video, stream_facts
from vidlstm.data.video.bitstream import keyframe_is_intra, nal_length_size

from .video_factory import LONG_BITS, read_index, wild_video


def _exp_golomb(value: int) -> str:
    code = f"{value + 1:b}"
    return "0" * (len(code) - 1) + code


def _h264_slice(nal_type: int, slice_type: int, first_mb: int = 0) -> bytes:
    """An H.264 slice NAL unit: header byte, then first_mb_in_slice and slice_type as Exp-Golomb codes, with
    emulation-prevention bytes where the payload holds 00 00 0x."""
    bits = _exp_golomb(first_mb) + _exp_golomb(slice_type)
    bits += "1" + "0" * (-(len(bits) + 1) % 8)  # stop bit, byte alignment
    payload = int(bits, 2).to_bytes(len(bits) // 8, "big")
    for low in (b"\x00", b"\x01", b"\x02", b"\x03"):
        payload = payload.replace(b"\x00\x00" + low, b"\x00\x00\x03" + low)
    return bytes([0x60 | nal_type]) + payload


def _hevc_nal(nal_type: int) -> bytes:
    return bytes([nal_type << 1, 0x01, 0xAF, 0x00])


def _length_prefixed(*units: bytes, size: int = 4) -> bytes:
    return b"".join(len(u).to_bytes(size, "big") + u for u in units)


def _annex_b(*units: bytes) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + u for u in units)


SEI, SPS, PPS = bytes([0x06, 0x05, 0x01, 0x80]), bytes([0x67, 0x64, 0x00, 0x0A]), bytes([0x68, 0xEE, 0x3C])


@pytest.mark.parametrize(("slice_type", "intra"), [(0, False), (1, False), (2, True), (4, True), (5, False),
                                                     (6, False), (7, True), (9, True)])
@pytest.mark.parametrize("packaging", ["length4", "length2", "annex_b"])
def test_h264_slice_types(slice_type: int, intra: bool, packaging: str) -> None:
    units = (SEI, _h264_slice(1, slice_type))
    if packaging == "annex_b":
        packet, size = _annex_b(SPS, PPS, *units), 0
    else:
        size = int(packaging[-1])
        packet = _length_prefixed(*units, size=size)
    assert keyframe_is_intra("h264", packet, size) is intra


@pytest.mark.parametrize("first_mb", [1, 396, 8159, 2**23 - 1])  # the last needs an emulation-prevention byte
@pytest.mark.parametrize(("slice_type", "intra"), [(0, False), (7, True)])
def test_h264_slices_past_the_first_macroblock(first_mb: int, slice_type: int, intra: bool) -> None:
    nal = _h264_slice(1, slice_type, first_mb)
    assert (b"\x00\x00\x03" in nal) == (first_mb == 2**23 - 1)
    assert keyframe_is_intra("h264", _length_prefixed(SEI, nal), 4) is intra
    assert keyframe_is_intra("h264", _annex_b(SEI, nal), 0) is intra


def test_h264_idr_is_intra_whatever_follows() -> None:
    assert keyframe_is_intra("h264", _length_prefixed(SEI, _h264_slice(5, 0)), 4)
    assert keyframe_is_intra("h264", _length_prefixed(SEI), 4)  # no picture slice: nothing against the flag
    assert keyframe_is_intra("h264", b"\x00\x00", 4)  # cut short


@pytest.mark.parametrize(("nal_type", "intra"), [(19, True), (20, True), (21, True), (16, True), (1, False),
                                                 (0, False), (9, False)])
def test_hevc_random_access_points(nal_type: int, intra: bool) -> None:
    aud, vps, sei = _hevc_nal(35), _hevc_nal(32), _hevc_nal(39)
    assert keyframe_is_intra("hevc", _length_prefixed(aud, vps, sei, _hevc_nal(nal_type)), 4) is intra
    assert keyframe_is_intra("hevc", _annex_b(aud, vps, sei, _hevc_nal(nal_type)), 0) is intra


def test_annex_b_units_keep_their_first_byte() -> None:
    """A TRAIL_N unit's header starts with 00: splitting at start codes must not strip it (the IDR header byte
    behind it would be read as the unit type: 0x26 >> 1 = 19)."""
    trail_n_then_idr_like = bytes([0x00, 0x26, 0xAF])
    assert keyframe_is_intra("hevc", _annex_b(trail_n_then_idr_like), 0) is False
    assert keyframe_is_intra("hevc", b"\x00\x00\x01" + trail_n_then_idr_like, 0) is False  # 3-byte start code


def test_nal_length_size_from_the_configuration_record() -> None:
    assert nal_length_size("h264", bytes([1, 0x64, 0, 0x0A, 0xFF, 0xE1])) == 4
    assert nal_length_size("h264", bytes([1, 0x64, 0, 0x0A, 0xFD, 0xE1])) == 2
    assert nal_length_size("h264", b"\x00\x00\x00\x01\x67") == 0 and nal_length_size("h264", None) == 0
    hvcc = bytearray(23)
    hvcc[0], hvcc[21] = 1, 0x0F
    assert nal_length_size("hevc", bytes(hvcc)) == 4
    hvcc[0] = 0  # configuration version 0 (early HEVC files; FFmpeg reads them)
    assert nal_length_size("hevc", bytes(hvcc)) == 4
    assert keyframe_is_intra("vp9", b"\x82", 0)  # other codecs: the flag stands


def test_an_intra_refresh_stream_is_found_and_pyav_seeks_only_to_real_keyframes(tmp_path: Path) -> None:
    path = wild_video(tmp_path / "refresh", "h264_intra_refresh", 120)
    found = stream_facts(path)
    assert found.false_keyframes >= 1 and found.keyframe_packets > found.false_keyframes
    with open_video(path, "pyav") as reader:
        assert [read_index(f, LONG_BITS) for f in reader.get_frames([100, 110, 63, 64, 65])] == [100, 110, 63, 64, 65]
        timeline = reader.timeline
        assert timeline is not None and timeline.source == "packets"  # no rebuild from a full decode needed
        keys = timeline.keys.tolist()
    with av.open(str(path)) as container:  # the keyframes: frames that decode as I pictures
        stream = container.streams.video[0]
        kinds = [getattr(frame.pict_type, "name", frame.pict_type) for frame in container.decode(stream)]
    intra = [i for i, kind in enumerate(kinds) if kind in ("I", 1)]  # an enum or an int, by PyAV version
    assert len(intra) >= 3 and keys == intra and len(keys) == found.keyframe_packets - found.false_keyframes
