"""Video readers: one interface over several decoding backends.

`open_video(path)` returns a `VideoReader` whose `get_frames(indices)` gives exactly the requested frames as a
``torch.uint8`` tensor of shape ``(T, 3, H, W)`` (RGB, in the order asked, repeats allowed). Every failure to
read a file surfaces as `VideoDecodeError` carrying the path and a one-line reason.

Modules: `errors`, `deadlines` (time limits), `facts` (stream facts, `VideoInfo`), `base` (`VideoReader`),
one per backend (`decord`, `torchcodec`, `pyav`, `opencv`), and `auto` (`open_video`, `probe`).
"""

from vidlstm.data.video.auto import AUTO_ORDER, BACKENDS, available_backends, backend_available, open_video, probe
from vidlstm.data.video.base import VideoReader
from vidlstm.data.video.deadlines import DEFAULT_TIMEOUT_S, call_with_deadline, time_limit
from vidlstm.data.video.decord import DecordReader
from vidlstm.data.video.errors import DecodeStuck, FrameOutOfRange, VideoDecodeError
from vidlstm.data.video.facts import VIDEO_EXTENSIONS, StreamFacts, VideoInfo, remember_facts, stream_facts
from vidlstm.data.video.opencv import OpenCVReader
from vidlstm.data.video.pyav import PyAVReader
from vidlstm.data.video.torchcodec import TorchCodecReader

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "DEFAULT_TIMEOUT_S",
    "VIDEO_EXTENSIONS",
    "DecodeStuck",
    "DecordReader",
    "FrameOutOfRange",
    "OpenCVReader",
    "PyAVReader",
    "StreamFacts",
    "TorchCodecReader",
    "VideoDecodeError",
    "VideoInfo",
    "VideoReader",
    "available_backends",
    "backend_available",
    "call_with_deadline",
    "open_video",
    "probe",
    "remember_facts",
    "stream_facts",
    "time_limit",
]
