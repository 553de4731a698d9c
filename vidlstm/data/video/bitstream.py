"""What an H.264 or HEVC packet flagged as a keyframe really holds, read from its first bytes without decoding.

Encoders using intra refresh (x264 ``intra-refresh``: low-latency streams, video calls, some cameras) flag recovery
points as keyframes although they are P pictures: the picture is only whole again several frames later. A backend
that seeks to such a "keyframe" and starts decoding there delivers partly refreshed pictures or other frames.
"""

from __future__ import annotations

from collections.abc import Iterator

H264, HEVC = "h264", "hevc"
_ANNEX_B = 0  # NAL length size meaning "start codes" (MPEG-TS, raw streams) instead of length prefixes


def nal_length_size(codec: str, extradata: bytes | None) -> int:
    """Bytes of the length prefix before each NAL unit (1-4, from the avcC/hvcC header in ``extradata``), or 0 for
    start-code (Annex B) streams."""
    data = bytes(extradata or b"")
    # Annex B parameter sets start with a start code; anything else is a configuration record (version 1, or 0 in
    # some early HEVC files, which FFmpeg accepts too).
    if not data or data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return _ANNEX_B
    at = 4 if codec == H264 else 21
    return (data[at] & 3) + 1 if len(data) > at else _ANNEX_B


def keyframe_is_intra(codec: str, packet: bytes | memoryview, length_size: int) -> bool:
    """Whether the picture of a keyframe-flagged ``packet`` decodes on its own: an H.264 IDR or I slice, an HEVC
    random access point (IDR, CRA, BLA). False for a P or B picture (an intra-refresh recovery point). Other codecs,
    and packets that cannot be parsed, count as intra (nothing to say against the flag)."""
    if codec not in (H264, HEVC):
        return True
    for nal in _nal_units(packet, length_size):
        if not any(nal[:2]):  # empty, or zero padding (no NAL header is 00 00)
            continue
        if codec == HEVC:
            kind = nal[0] >> 1 & 0x3F
            if kind < 32:  # the first picture slice: a random access point or not
                return 16 <= kind <= 23
            continue
        kind = nal[0] & 0x1F
        if kind == 5:  # IDR slice
            return True
        if kind == 1:  # non-IDR slice: its type tells (first_mb_in_slice, then slice_type, both ue(v))
            slice_type = _second_exp_golomb(_unescape(bytes(nal[1:24])))
            return slice_type is None or slice_type % 5 in (2, 4)  # I or SI
    return True


def _nal_units(packet: bytes | memoryview, length_size: int) -> Iterator[memoryview]:
    """The NAL units of ``packet``, in order, as views (nothing copied; the caller stops at the first picture)."""
    view = memoryview(packet)
    if length_size:
        at = 0
        while at + length_size <= len(view):
            size = int.from_bytes(view[at: at + length_size], "big")
            yield view[at + length_size: at + length_size + size]
            at += length_size + size
        return
    # Each start code ends in 00 00 01; what precedes the first is no unit. A unit may end in the zero that begins
    # the next 4-byte start code: only a unit's first bytes are read.
    data = packet if isinstance(packet, bytes) else view.tobytes()
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        end = data.find(b"\x00\x00\x01", start + 3)
        yield view[start + 3: len(data) if end < 0 else end]
        start = end


def _unescape(data: bytes) -> bytes:
    """Drop the emulation-prevention bytes (00 00 03 -> 00 00) of a NAL unit's payload."""
    return data.replace(b"\x00\x00\x03", b"\x00\x00")


def _second_exp_golomb(data: bytes) -> int | None:
    """The second unsigned Exp-Golomb value at the start of ``data``, or None when the bytes end first."""
    bits = "".join(f"{byte:08b}" for byte in data)
    at, value = 0, None
    for _ in range(2):
        zeros = bits.find("1", at) - at
        if zeros < 0 or at + 2 * zeros + 1 > len(bits):
            return None
        value = int(bits[at + zeros: at + 2 * zeros + 1], 2) - 1
        at += 2 * zeros + 1
    return value
