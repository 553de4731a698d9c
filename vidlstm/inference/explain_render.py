"""Pictures of an `Explanation` for looking, not reading: an overlay video/GIF (Grad-CAM heat map blended on
each explained frame, the class-probability timeline under it with a cursor at the current frame) and a
filmstrip PNG (the overlays in a row, each with a bar of its temporal importance under it).

Small frames (the demo's 64 px) are upscaled (nearest neighbour, so pixels stay crisp) until the short side
reaches ``min_side``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from vidlstm.data.synthetic import write_mp4
from vidlstm.inference.explain import Explanation

# Line colours (RGB) of the timeline: the explained class first, then the other most probable classes.
PALETTE = ((255, 80, 60), (80, 170, 255), (120, 220, 100), (240, 200, 60), (200, 120, 255))
FONT = cv2.FONT_HERSHEY_SIMPLEX


def heat_overlay(frames: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 (T, H, W, 3) RGB frames + float (T, H, W) maps in [0, 1] -> uint8 (T, H, W, 3): a JET heat map
    blended in with weight ``alpha * cam`` (cold regions keep the frame as it is)."""
    out = np.empty_like(frames)
    for t in range(len(frames)):
        heat = cv2.applyColorMap(np.uint8(np.clip(cam[t], 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1]
        weight = (alpha * (0.3 + 0.7 * np.clip(cam[t], 0, 1)))[..., None]
        out[t] = np.uint8(frames[t] * (1 - weight) + heat * weight)
    return out


def upscale(frames: np.ndarray, min_side: int) -> np.ndarray:
    """(T, H, W, 3) -> frames scaled by the integer factor that brings the short side to ``min_side`` or more
    (nearest neighbour; unchanged if already that large); height and width are then made even (H.264)."""
    h, w = frames.shape[1:3]
    factor = max(1, -(-min_side // min(h, w)))
    if factor > 1:
        frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    return frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]


def _text(image: np.ndarray, text: str, x: int, y: int, colour: tuple[int, ...] = (235, 235, 235),
          scale: float = 0.4, outline: bool = False) -> None:
    if outline:  # readable on any frame
        cv2.putText(image, text, (x, y), FONT, scale, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(image, text, (x, y), FONT, scale, colour, 1, cv2.LINE_AA)


def timeline_classes(explanation: Explanation, count: int = 3) -> list[int]:
    """The explained class, then the classes with the highest peak probability, ``count`` in all."""
    order = [int(c) for c in np.argsort(-explanation.probs.max(axis=0)) if c != explanation.target]
    return [explanation.target, *order[: count - 1]]


def timeline(explanation: Explanation, width: int, height: int, cursor: int | None) -> np.ndarray:
    """uint8 (height, width, 3): a legend (each shown class's name and probability at step ``cursor``) over a
    plot of those classes' probabilities after every step (the explained class thick, in red) with a vertical
    cursor at step ``cursor``."""
    strip = np.full((height, width, 3), 24, np.uint8)
    probs, steps = explanation.probs, len(explanation.probs)
    shown = timeline_classes(explanation)
    pad, line = 6, 12
    top = line * len(shown) + 6
    plot_h = max(8, height - top - 4)
    at = steps - 1 if cursor is None else cursor
    for rank, c in enumerate(shown):
        _text(strip, f"{explanation.class_names[c]} {probs[at, c]:.2f}", pad, line * (rank + 1),
              PALETTE[rank % len(PALETTE)], scale=0.35)
    xs = np.linspace(pad, width - pad, steps) if steps > 1 else np.array([width / 2])
    cv2.line(strip, (pad, top + plot_h), (width - pad, top + plot_h), (90, 90, 90), 1)
    cv2.line(strip, (pad, top), (width - pad, top), (50, 50, 50), 1)
    for rank, c in reversed(list(enumerate(shown))):
        ys = top + (1 - probs[:, c]) * plot_h
        pts = np.round(np.stack([xs, ys], 1) * 16).astype(np.int32)
        cv2.polylines(strip, [pts], False, PALETTE[rank % len(PALETTE)], 2 if rank == 0 else 1, cv2.LINE_AA,
                      shift=4)
    if cursor is not None:
        x = round(float(xs[cursor]))
        cv2.line(strip, (x, top), (x, top + plot_h), (255, 255, 255), 1)
    return strip


def overlay_frames(explanation: Explanation, min_side: int = 256, alpha: float = 0.5,
                   timeline_height: int = 96) -> np.ndarray:
    """uint8 (T, H' + timeline_height, W', 3): each explained frame with its heat map (upscaled) above the
    probability timeline with the cursor at that frame."""
    frames = upscale(heat_overlay(explanation.frames, explanation.cam, alpha), min_side)
    width = frames.shape[2]
    title = f"{explanation.class_names[explanation.target]}"
    out = []
    for t, frame in enumerate(frames):
        frame = frame.copy()
        _text(frame, f"{title}  frame {int(explanation.frame_indices[t])}", 4, 14, outline=True)
        out.append(np.concatenate([frame, timeline(explanation, width, timeline_height, t)], axis=0))
    return np.stack(out)


def filmstrip(explanation: Explanation, tile: int = 128, alpha: float = 0.5, bar_height: int = 36) -> np.ndarray:
    """uint8 (tile + bar_height + header, T * tile, 3): the overlays in a row (each scaled so its short side is
    ``tile``), under each a bar of its temporal importance (relative to the clip's largest) and its value."""
    frames = heat_overlay(explanation.frames, explanation.cam, alpha)
    h, w = frames.shape[1:3]
    th, tw = (tile, round(tile * w / h)) if h <= w else (round(tile * h / w), tile)
    tiles = [cv2.resize(f, (tw, th), interpolation=cv2.INTER_NEAREST if th >= h else cv2.INTER_AREA) for f in frames]
    header = 20
    strip = np.full((header + th + bar_height, tw * len(tiles), 3), 24, np.uint8)
    peak = float(explanation.importance.max()) or 1.0
    for t, image in enumerate(tiles):
        x = t * tw
        strip[header:header + th, x:x + tw] = image
        _text(strip, f"#{int(explanation.frame_indices[t])}", x + 3, header + 12, outline=True)
        value = float(explanation.importance[t])
        bar = round((bar_height - 14) * value / peak)
        cv2.rectangle(strip, (x + 4, header + th + bar_height - 2 - bar), (x + tw - 5, header + th + bar_height - 2),
                      PALETTE[0], -1)
        _text(strip, f"{value:.2f}", x + 3, header + th + 11, scale=0.35)
    target = explanation.class_names[explanation.target]
    predicted = explanation.class_names[explanation.predicted]
    _text(strip, f"explained: {target}   predicted: {predicted} {explanation.clip_probs[explanation.predicted]:.2f}"
                 "   bars: temporal importance", 4, 14)
    return strip


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """uint8 (N, H, W, 3) RGB -> an endlessly looping GIF (Pillow)."""
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(20, round(1000 / fps)), loop=0)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """uint8 (H, W, 3) RGB -> PNG."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
        raise OSError(f"{path}: could not write the PNG")


def render(explanation: Explanation, video: str | os.PathLike, filmstrip_path: str | os.PathLike,
           fps: float = 4.0, min_side: int = 256, alpha: float = 0.5, tile: int = 128) -> None:
    """Write the overlay ``video`` (.mp4: H.264 via PyAV; .gif: Pillow; one explained frame per output frame at
    ``fps``) and the ``filmstrip_path`` PNG."""
    video = Path(video)
    frames = overlay_frames(explanation, min_side, alpha)
    suffix = video.suffix.lower()
    if suffix == ".gif":
        write_gif(video, frames, fps)
    elif suffix == ".mp4":
        # H.264 needs an integer rate: repeat frames so slow rates (e.g. 2 fps) still play at that pace.
        repeat = max(1, round(8 / fps)) if fps < 8 else 1
        write_mp4(video, frames.repeat(repeat, axis=0), fps=max(1, round(fps * repeat)), crf=18)
    else:
        raise ValueError(f"{video}: output must end in .mp4 or .gif")
    write_png(filmstrip_path, filmstrip(explanation, tile, alpha))


OUTPUT_SUFFIXES: Sequence[str] = (".mp4", ".gif")
