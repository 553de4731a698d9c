"""HTTP serving on LitServe (`vidlstm-serve`, `scripts/serve.py`): ``POST /predict`` with a video as the raw
request body or as multipart field ``file`` -> JSON ``{label, score, topk_labels, topk_scores, num_frames, ...}``;
``?window=2&stride=1`` adds ``windows`` and action ``segments``; ``GET /health``.

LitServe (Lightning's serving library, on FastAPI + uvicorn) runs the model in its own inference worker process
on ``device`` (``auto``: a GPU when visible) and batches requests of concurrent clients into one model call
(``max_batch_size``, ``batch_timeout_s``). vidlstm adds one LitServe spec (`VideoSpec`, the way LitServe's own
OpenAI specs add endpoints) because LitServe's default endpoint parses bodies as JSON or forms only: the spec
reads the upload (raw or multipart) under a size limit, decodes it in the API process (threads, ``decode_workers``
at a time, so decoding overlaps the model and a bad upload is answered before it reaches the model), and sends
the model's worker small uint8 clips at the model's frame size. Bad input gets a 4xx with the reason and never
reaches the model: 400 (empty or malformed request), 403 (a server path outside ``allowed_root``, or any path
when no root is configured), 404 (no such server file), 413 (too large), 422 (not a decodable video: truncated,
audio only, not a video at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import pickle
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidlstm.data.video import VideoDecodeError

try:
    import litserve
    from fastapi import HTTPException, Request
    from fastapi.responses import JSONResponse
    from litserve import LitAPI
    from litserve.specs.base import LitSpec
    from litserve.utils import LitAPIStatus, ResponseBufferItem
except ImportError as _missing:  # the optional `serve` extra
    raise ImportError(f"serving needs LitServe ({_missing}): pip install -e '.[serve]'") from _missing

from vidlstm.inference.predictor import Predictor, windows
from vidlstm.inference.segments import segments_of

log = logging.getLogger(__name__)

PATH = "/predict"


@dataclass
class ServeSettings:
    """What `build_server` needs; every field is a key of conf/serve.yaml (see there)."""

    ckpt_path: str
    device: str = "auto"
    max_batch_size: int = 8
    batch_timeout_s: float = 0.01
    max_clips_per_call: int = 64
    workers_per_device: int = 1
    num_clips: int = 3
    top_k: int = 5
    backend: str = "auto"
    decode_timeout_s: float = 60.0
    decode_workers: int = 2
    max_upload_mb: float = 100.0
    max_windows: int = 600
    allowed_root: str | None = None
    upload_dir: str | None = None
    request_timeout_s: float = 120.0
    segments: dict[str, Any] | None = None
    threads: int | None = None

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class BadRequest(Exception):
    """An upload the server refuses: HTTP ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def allowed_path(name: str, root: str | None) -> Path:
    """The server file a client names, only inside ``root`` (after resolving links and ``..``)."""
    if not root:
        raise BadRequest(403, "reading files on the server is off (the server has no allowed_root); upload the "
                              "video instead")
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, name))
    if os.path.commonpath([real, base]) != base:
        raise BadRequest(403, f"path {name!r} is outside the server's allowed_root")
    if not os.path.isfile(real):
        raise BadRequest(404, f"path {name!r}: no such file under allowed_root")
    return Path(real)


class ClipDecoder:
    """Decodes a video into the model's clips, resized and cropped but still uint8 (small to ship to the model's
    process): the ``num_clips`` clips of `Predictor.predict_video`, or one clip per window of window mode."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.geometric = predictor.uint8_transform

    def __call__(self, path: Path, window_s: float | None, stride_s: float | None, max_windows: int
                 ) -> dict[str, Any]:
        p = self.predictor
        with p.open(path) as reader:
            info = {"num_frames": reader.num_frames, "fps": round(reader.fps, 3)}
            if window_s is None:
                sampled = p.sampler(reader.num_frames)
                small = self.geometric(reader.get_frames([i for clip in sampled for i in clip]))
                clips = small.reshape(len(sampled), p.num_frames, *small.shape[1:]).numpy()
                return {**info, "clips": clips, "windows": None}
            spans = windows(reader.num_frames, reader.fps, window_s, stride_s or window_s)
            if len(spans) > max_windows:
                raise BadRequest(413, f"{len(spans)} windows of {window_s:g} s every {stride_s or window_s:g} s: "
                                      f"more than the server's max_windows={max_windows}")
            clips = [self.geometric(reader.get_frames(p.window_indices(w.first, w.stop))).numpy() for w in spans]
            return {**info, "clips": np.stack(clips), "windows": [(w.start_s, w.end_s) for w in spans]}


class VideoSpec(LitSpec):
    """``POST /predict``: the upload is read, checked and decoded here (the API process); the model's worker gets
    uint8 clips and returns class probabilities per clip."""

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__()
        self.settings = settings
        self.api_path = PATH
        self.add_endpoint(PATH, self.predict_endpoint, ["POST"])
        self._decoder: ClipDecoder | None = None
        self._slots: asyncio.Semaphore | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_decoder"] = state["_slots"] = None
        return state

    def decode_request(self, request: Any, context_kwargs: dict | None = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: dict | None = None) -> Any:
        return output

    @property
    def decoder(self) -> ClipDecoder:
        if self._decoder is None:  # built on first use, in the API server process
            s = self.settings
            self._decoder = ClipDecoder(Predictor.from_checkpoint(s.ckpt_path, "cpu", s.num_clips, s.top_k,
                                                                  s.backend, s.decode_timeout_s))
        return self._decoder

    async def predict_endpoint(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            window_s, stride_s = _window_query(request)
            async with _upload(request, self.settings) as path:
                if self._slots is None:
                    self._slots = asyncio.Semaphore(max(1, self.settings.decode_workers))
                async with self._slots:
                    decoded = await _decode(self.decoder, path, window_s, stride_s, self.settings)
        except BadRequest as err:
            log.info("%s %s -> %d %s", request.method, request.url.path, err.status, err.reason)
            return JSONResponse({"error": err.reason}, status_code=err.status)
        probs = await self._model(decoded["clips"])
        body = _response(self.decoder.predictor, decoded, probs, self.settings)
        body["seconds"] = round(time.perf_counter() - started, 4)
        return JSONResponse(body)

    async def _model(self, clips: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) of uint8 clips (N, T, 3, h, w) from the inference worker."""
        uid = uuid.uuid4()
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        self.request_queue.put_nowait((self.response_queue_id, uid, time.monotonic(), {"clips": clips}))
        await event.wait()
        response, status = self.response_buffer.pop(uid).response
        if status == LitAPIStatus.ERROR:
            if isinstance(response, bytes):
                with contextlib.suppress(Exception):
                    response = pickle.loads(response)
            if isinstance(response, HTTPException):
                raise response
            log.error("the model failed on a request: %s", response)
            raise HTTPException(500, "the model failed on this request (see the server log)")
        return np.asarray(response["probs"], dtype=np.float64)


class VideoAPI(LitAPI):
    """The model side, in LitServe's inference worker: a batch of requests' clips -> class probabilities."""

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__(max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout_s,
                         spec=VideoSpec(settings))
        self.settings = settings

    def setup(self, device: str) -> None:
        s = self.settings
        if device == "cpu":  # leave cores to the HTTP process's decoding: oversubscribed cores slow every call
            torch.set_num_threads(s.threads or max(1, (os.cpu_count() or 1) // 2))
        self.predictor = Predictor.from_checkpoint(s.ckpt_path, device, s.num_clips, s.top_k, s.backend,
                                                   s.decode_timeout_s)
        self.to_float = self.predictor.to_float
        log.info("model loaded on %s: %d classes", device, len(self.predictor.class_names))

    def batch(self, inputs: list[dict[str, Any]]) -> tuple[np.ndarray, list[int]]:
        return np.concatenate([x["clips"] for x in inputs]), [len(x["clips"]) for x in inputs]

    def predict(self, x: Any) -> tuple[np.ndarray, list[int]]:
        if isinstance(x, dict):  # a single request (max_batch_size=1)
            x = (x["clips"], [len(x["clips"])])
        clips, counts = x
        out = []
        for part in np.array_split(clips, math.ceil(len(clips) / self.settings.max_clips_per_call)):
            frames = torch.from_numpy(part)
            floats = self.to_float(frames.flatten(0, 1))
            floats = floats.view(*frames.shape[:2], *floats.shape[1:])
            out.append(self.predictor.clip_probabilities(floats[None])[0].numpy())
        return np.concatenate(out), counts

    def unbatch(self, output: tuple[np.ndarray, list[int]]) -> list[np.ndarray]:
        probs, counts = output
        return np.split(probs, np.cumsum(counts)[:-1])

    def encode_response(self, output: Any) -> dict[str, Any]:
        probs = output if isinstance(output, np.ndarray) else output[0]
        return {"probs": probs.tolist()}


def build_server(settings: ServeSettings) -> litserve.LitServer:
    """A `litserve.LitServer` serving the checkpoint (call ``.run(host=..., port=...)``)."""
    accelerator = settings.device if settings.device in ("auto", "cpu", "cuda", "mps") else "cuda"
    devices: Any = "auto"
    if settings.device.startswith("cuda:"):
        devices = [int(settings.device.split(":", 1)[1])]
    return litserve.LitServer(VideoAPI(settings), accelerator=accelerator, devices=devices,
                              workers_per_device=settings.workers_per_device, timeout=settings.request_timeout_s,
                              model_metadata={"checkpoint": str(settings.ckpt_path)})


def _window_query(request: Any) -> tuple[float | None, float | None]:
    """``?window=SECONDS[&stride=SECONDS]`` for window mode."""
    values = []
    for key in ("window", "stride"):
        raw = request.query_params.get(key)
        if raw in (None, ""):
            values.append(None)
            continue
        try:
            value = float(raw)
        except ValueError as err:
            raise BadRequest(400, f"{key}={raw!r} is not a number of seconds") from err
        if not (math.isfinite(value) and value > 0):
            raise BadRequest(400, f"{key}={raw!r}: must be a positive number of seconds")
        values.append(value)
    if values[0] is None and values[1] is not None:
        raise BadRequest(400, "stride needs window")
    return values[0], values[1]


async def _read_body(request: Any, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes (and before reading when the
    declared length already does)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"upload of {int(declared)} bytes is larger than the server's limit of {limit} bytes "
                              "(max_upload_mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"upload is larger than the server's limit of {limit} bytes (max_upload_mb)")
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def _upload(request: Any, settings: ServeSettings) -> AsyncIterator[Path]:
    """The video of the request as a file: the raw body, multipart field ``file`` (or ``path``), or JSON
    ``{"path": ...}`` naming a server file under ``allowed_root``. Uploads live in a temporary file that is
    deleted afterwards."""
    from starlette.requests import Request

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _read_body(request, settings.max_bytes + (64 * 1024 if kind == "multipart/form-data" else 0))
    data: bytes | None = body
    named: str | None = None
    if kind == "application/json":
        try:
            named = json.loads(body or b"null").get("path")
        except (ValueError, AttributeError) as err:
            raise BadRequest(400, 'a JSON body must be {"path": "<file under the allowed_root>"}') from err
        if not isinstance(named, str):
            raise BadRequest(400, 'a JSON body must be {"path": "<file under the allowed_root>"}')
    elif kind == "multipart/form-data":
        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
        except Exception as err:  # python-multipart's and starlette's parse errors
            raise BadRequest(400, f"malformed multipart body ({' '.join(str(err).split())[:160]})") from err
        upload = form.get("file")
        if upload is not None and hasattr(upload, "read"):
            data = await upload.read()
            await upload.close()
        elif isinstance(form.get("path"), str):
            named, data = form["path"], None
        else:
            raise BadRequest(400, "multipart body without a 'file' field (send the video as field 'file')")
    if named is not None:
        path = allowed_path(named, settings.allowed_root)
        if path.stat().st_size > settings.max_bytes:
            raise BadRequest(413, f"path {named!r} is larger than the server's limit of {settings.max_bytes} bytes")
        yield path
        return
    if not data:
        raise BadRequest(400, "empty upload: send the video as the request body or as multipart field 'file'")
    if len(data) > settings.max_bytes:
        raise BadRequest(413, f"upload of {len(data)} bytes is larger than the server's limit of "
                              f"{settings.max_bytes} bytes (max_upload_mb)")
    handle, name = tempfile.mkstemp(prefix="vidlstm-upload-", dir=settings.upload_dir)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        yield Path(name)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


async def _decode(decoder: Callable[..., dict[str, Any]], path: Path, window_s: float | None,
                  stride_s: float | None, settings: ServeSettings) -> dict[str, Any]:
    """Decode in a thread, bounded by ``decode_timeout_s``; a video that cannot be decoded is a 422."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(decoder, path, window_s, stride_s, settings.max_windows),
                                      timeout=settings.decode_timeout_s)
    except VideoDecodeError as err:  # the reason names the upload's temporary file: name the upload instead
        shown = "the upload" if path.name.startswith("vidlstm-upload-") else path.name
        raise BadRequest(422, f"not a decodable video: {err.reason.replace(str(path), shown)}") from err
    except asyncio.TimeoutError as err:
        raise BadRequest(422, f"not a decodable video: decoding took longer than {settings.decode_timeout_s:g} s") \
            from err


def _response(predictor: Predictor, decoded: dict[str, Any], probs: np.ndarray, settings: ServeSettings
              ) -> dict[str, Any]:
    """The JSON answer: the video-level prediction (clip probabilities averaged; in window mode the windows'),
    and in window mode the windows and their segments."""
    tensor = torch.from_numpy(probs)
    row = predictor.row("", tensor.mean(0), decoded["num_frames"])
    body = {k: row[k] for k in ("label", "score", "topk_labels", "topk_scores", "num_frames")}
    body["fps"] = decoded["fps"]
    if decoded["windows"] is not None:
        rows = []
        for (start, end), p in zip(decoded["windows"], tensor, strict=True):
            window = predictor.row("", p, 0)
            rows.append({"start_s": start, "end_s": end, **{k: window[k] for k in ("label", "score", "topk_labels",
                                                                                 "topk_scores")}})
        body["windows"] = rows
        body["segments"] = [{k: v for k, v in s.items() if k != "kind"} for s in segments_of(
            [(start, end, p) for (start, end), p in zip(decoded["windows"], tensor, strict=True)],
            predictor.class_names, **(settings.segments or {}))]
    return body
