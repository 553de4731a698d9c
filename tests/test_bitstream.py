"""Keyframe-flagged packets that hold P/B pictures (intra refresh) are told apart from real ones by their first
bytes: hand-made H.264 and HEVC NAL units in both packagings, and a real x264 intra-refresh stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidlstm.data.video import open_video, stream_facts
from vidlstm.data.video.bitstream import keyframe_is_intra, nal_length_size

from .video_factory import wild_video


def _h264_slice(nal_type: int, slice_type: int) -> bytes:
    """An H.264 slice NAL unit: header byte, then first_mb_in_slice = 0 and ``slice_type`` as Exp-Golomb codes."""
    code = f"{slice_type + 1:b}"
    bits = "1" + "0" * (len(code) - 1) + code  # ue(0), ue(slice_type)
    bits += "1" + "0" * (-(len(bits) + 1) % 8)  # stop bit, byte alignment
    return bytes([0x60 | nal_type]) + int(bits, 2).to_bytes(len(bits) // 8, "big")


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


def test_h264_idr_is_intra_whatever_follows() -> None:
    assert keyframe_is_intra("h264", _length_prefixed(SEI, _h264_slice(5, 0)), 4)
    assert keyframe_is_intra("h264", _length_prefixed(SEI), 4)  # no picture slice: nothing against the flag
    assert keyframe_is_intra("h264", b"\x00\x00", 4)  # cut short


@pytest.mark.parametrize(("nal_type", "intra"), [(19, True), (20, True), (21, True), (16, True), (1, False),
                                                 (0, False), (9, False)])
def test_hevc_random_access_points(nal_type: int, intra: bool) -> None:
    vps, sei = _hevc_nal(32), _hevc_nal(39)
    assert keyframe_is_intra("hevc", _length_prefixed(vps, sei, _hevc_nal(nal_type)), 4) is intra
    assert keyframe_is_intra("hevc", _annex_b(vps, sei, _hevc_nal(nal_type)), 0) is intra


def test_nal_length_size_from_the_configuration_record() -> None:
    assert nal_length_size("h264", bytes([1, 0x64, 0, 0x0A, 0xFF, 0xE1])) == 4
    assert nal_length_size("h264", bytes([1, 0x64, 0, 0x0A, 0xFD, 0xE1])) == 2
    assert nal_length_size("h264", b"\x00\x00\x00\x01\x67") == 0 and nal_length_size("h264", None) == 0
    hvcc = bytearray(23)
    hvcc[0], hvcc[21] = 1, 0x0F
    assert nal_length_size("hevc", bytes(hvcc)) == 4
    assert keyframe_is_intra("vp9", b"\x82", 0)  # other codecs: the flag stands


def test_an_intra_refresh_stream_is_found_and_pyav_seeks_only_to_real_keyframes(tmp_path: Path) -> None:
    path = wild_video(tmp_path / "refresh", "h264_intra_refresh", 120)
    found = stream_facts(path)
    assert found.false_keyframes >= 1 and found.keyframe_packets > found.false_keyframes
    with open_video(path, "pyav") as reader:
        reader.get_frames([100, 110])
        timeline = reader.timeline
        assert timeline is not None and timeline.source == "packets"  # no rebuild from a full decode needed
        assert len(timeline.keys) == found.keyframe_packets - found.false_keyframes
