"""The demo dataset: real H.264 .mp4 files of shapes whose classes differ only in temporal order.

Classes come in pairs (move_right/move_left, grow/shrink, rotate_cw/rotate_ccw, appear/vanish). The second
class of a pair is rendered by drawing a clip of the first and reversing its frames, so both classes of a pair
have exactly the same distribution of individual frames: a model that ignores frame order cannot beat ~50%
within a pair. Horizontal-flip augmentation would turn move_right into move_left and must stay off.

Layout written under ``root``: ``{train,val,test}/<class>/<class>_<nnnn>.mp4`` plus ``meta.json`` holding the
generation parameters. `DemoDataset.prepare()` renders once and reuses the files while the parameters match.
"""

from __future__ import annotations

import json
import math
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from vidlstm.utils.progress import progress

FORMAT_VERSION = 2
CLASS_PAIRS: tuple[tuple[str, str], ...] = (
    ("move_right", "move_left"),
    ("grow", "shrink"),
    ("rotate_cw", "rotate_ccw"),
    ("appear", "vanish"),
)
DEMO_CLASSES: tuple[str, ...] = tuple(name for pair in CLASS_PAIRS for name in pair)
SHAPES = ("circle", "square", "triangle", "diamond", "bar")
_SUBPIXEL_BITS = 4  # cv2 drawing with 1/16 px vertex precision, so slow motion is still smooth


@dataclass(frozen=True)
class DemoDataset:
    """Renders (once) and describes the demo dataset.

    Args:
        root: folder the videos go into.
        train_per_class / val_per_class / test_per_class: videos per class in each split.
        size: frame height and width in pixels.
        min_frames / max_frames: each video's length is drawn uniformly from this range.
        fps: frame rate written into the files.
        max_noise: upper bound of the per-video Gaussian pixel-noise sigma (0-255 scale).
        crf: x264 quality (lower is better); kept low so compression does not leak frame order.
        seed: master seed; every video has its own stream derived from (seed, split, class, index).
        workers: processes used for rendering (0 renders in this process).
    """

    root: str
    train_per_class: int = 96
    val_per_class: int = 24
    test_per_class: int = 32
    size: int = 64
    min_frames: int = 20
    max_frames: int = 32
    fps: int = 15
    max_noise: float = 10.0
    crf: int = 10
    seed: int = 0
    workers: int = 2

    @property
    def classes(self) -> tuple[str, ...]:
        return DEMO_CLASSES

    def split_dir(self, split: str) -> str:
        return str(Path(self.root) / split)

    def fingerprint(self) -> dict:
        params = asdict(self)
        for key in ("root", "workers"):
            params.pop(key)
        return {"format_version": FORMAT_VERSION, "classes": list(DEMO_CLASSES), **params}

    def is_ready(self) -> bool:
        meta = Path(self.root) / "meta.json"
        try:
            return json.loads(meta.read_text()) == self.fingerprint()
        except (OSError, ValueError):
            return False

    def prepare(self) -> Path:
        """Render the dataset into ``root`` unless an identical one is already there. Returns ``root``."""
        root = Path(self.root)
        if self.is_ready():
            return root
        if self.min_frames < 2 or self.max_frames < self.min_frames:
            raise ValueError(f"demo dataset: need 2 <= min_frames <= max_frames, got {self.min_frames}, "
                             f"{self.max_frames}")
        # Render into a sibling folder and swap it in at the end: an interrupted run leaves no half dataset.
        staging = root.with_name(root.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        jobs = [
            (str(staging / split / name / f"{name}_{i:04d}.mp4"), split, name, i)
            for split, count in (("train", self.train_per_class), ("val", self.val_per_class),
                                 ("test", self.test_per_class))
            for name in DEMO_CLASSES
            for i in range(count)
        ]
        for split in ("train", "val", "test"):
            for name in DEMO_CLASSES:
                (staging / split / name).mkdir(parents=True, exist_ok=True)
        with progress() as bar:
            task = bar.add_task(f"Rendering demo videos into {root}", total=len(jobs))
            if self.workers > 0:
                with ProcessPoolExecutor(max_workers=self.workers) as pool:
                    for _ in pool.map(self._render_job, jobs, chunksize=16):
                        bar.advance(task)
            else:
                for job in jobs:
                    self._render_job(job)
                    bar.advance(task)
        (staging / "meta.json").write_text(json.dumps(self.fingerprint(), indent=2))
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
        return root

    def _render_job(self, job: tuple[str, str, str, int]) -> None:
        path, split, name, index = job
        write_mp4(path, self.render(split, name, index), fps=self.fps, crf=self.crf)

    def render(self, split: str, name: str, index: int) -> np.ndarray:
        """Frames of one video as uint8 (N, size, size, 3) RGB; deterministic in (seed, split, name, index)."""
        split_id = ("train", "val", "test").index(split)
        rng = np.random.default_rng([self.seed, split_id, DEMO_CLASSES.index(name), index])
        return render_clip(name, rng, self.size, self.min_frames, self.max_frames, self.max_noise)


def render_clip(name: str, rng: np.random.Generator, size: int = 64, min_frames: int = 20, max_frames: int = 32,
                max_noise: float = 10.0) -> np.ndarray:
    """One noisy clip of class ``name``, uint8 (N, size, size, 3). The second class of a pair is the first
    class's clip for the same random draws, reversed in time."""
    class_id = DEMO_CLASSES.index(name)
    num_frames = int(rng.integers(min_frames, max_frames + 1))
    frames = render_forward(CLASS_PAIRS[class_id // 2][0], num_frames, size, rng)
    if class_id % 2 == 1:
        frames = frames[::-1]
    noise = rng.normal(0.0, rng.uniform(0.0, max_noise), size=frames.shape)
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def _polygon(shape: str, cx: float, cy: float, radius: float, angle_deg: float) -> np.ndarray:
    """Vertices (K, 2) of ``shape`` centred at (cx, cy), circumradius ``radius``, rotated by ``angle_deg``."""
    if shape == "circle":
        theta = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        pts = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    elif shape == "square":
        pts = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) / math.sqrt(2)
    elif shape == "triangle":
        theta = np.deg2rad([-90, 30, 150])
        pts = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    elif shape == "diamond":
        pts = np.array([[0, -1], [0.55, 0], [0, 1], [-0.55, 0]])
    elif shape == "bar":
        pts = np.array([[1, 0.3], [-1, 0.3], [-1, -0.3], [1, -0.3]])
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return pts @ rot.T * radius + np.array([cx, cy])


def _shape_mask(size: int, shape: str, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    pts = np.round(_polygon(shape, cx, cy, radius, angle) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_AA, shift=_SUBPIXEL_BITS)
    return mask.astype(np.float32) / 255.0


def render_forward(kind: str, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of the first class of a pair, float32 (N, size, size, 3) before noise."""
    background = rng.uniform(0, 90, size=3)
    colour = rng.uniform(150, 255, size=3)
    shape = str(rng.choice(SHAPES if kind != "rotate_cw" else SHAPES[1:]))
    t = np.linspace(0.0, 1.0, num_frames)
    alpha = np.ones(num_frames)
    angle0 = rng.uniform(0, 360)
    if kind == "move_right":
        radius = np.full(num_frames, rng.uniform(0.08, 0.14) * size)
        span = rng.uniform(0.35, 0.6) * size
        x0 = rng.uniform(radius[0], size - radius[0] - span)
        cx = x0 + span * t
        cy = np.full(num_frames, rng.uniform(radius[0], size - radius[0]))
        angle = np.full(num_frames, angle0)
    elif kind == "grow":
        r0, r1 = rng.uniform(0.04, 0.09) * size, rng.uniform(0.22, 0.32) * size
        radius = r0 + (r1 - r0) * t
        cx = np.full(num_frames, rng.uniform(r1 * 0.7, size - r1 * 0.7))
        cy = np.full(num_frames, rng.uniform(r1 * 0.7, size - r1 * 0.7))
        angle = np.full(num_frames, angle0)
    elif kind == "rotate_cw":
        # The shape turns about a pivot off its centre (like a clock hand), so the turning direction shows in
        # both its orientation and its position.
        r = rng.uniform(0.13, 0.19) * size
        arm = rng.uniform(0.8, 1.1) * r
        pivot = rng.uniform(arm + r, size - arm - r, size=2)
        # Image y points down, so a growing angle turns clockwise on screen.
        angle = angle0 + rng.uniform(8.0, 14.0) * np.arange(num_frames)
        radius = np.full(num_frames, r)
        cx = pivot[0] + arm * np.cos(np.radians(angle))
        cy = pivot[1] + arm * np.sin(np.radians(angle))
    elif kind == "appear":
        r = rng.uniform(0.12, 0.22) * size
        radius = np.full(num_frames, r)
        cx = np.full(num_frames, rng.uniform(r, size - r))
        cy = np.full(num_frames, rng.uniform(r, size - r))
        angle = np.full(num_frames, angle0)
        onset, full = rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0)
        alpha = np.clip((t - onset) / (full - onset), 0.0, 1.0)
    else:
        raise ValueError(f"unknown demo motion {kind!r}")
    frames = np.empty((num_frames, size, size, 3), np.float32)
    for i in range(num_frames):
        m = _shape_mask(size, shape, cx[i], cy[i], radius[i], angle[i])[..., None] * alpha[i]
        frames[i] = background * (1 - m) + colour * m
    return frames


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 15, crf: int = 10) -> None:
    """Encode uint8 (N, H, W, 3) RGB frames as H.264 (yuv420p) with PyAV."""
    import av

    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
