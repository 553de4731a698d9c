"""The synthetic datasets: real H.264 .mp4 files of shapes, rendered once and reused.

Two sets share the rendering machinery (`SyntheticDataset`) and differ in what defines a class:

`DemoDataset` (the demo): classes come in pairs (move_right/move_left, grow/shrink, rotate_cw/rotate_ccw,
appear/vanish) that differ only in temporal order. The second class of a pair is rendered by drawing a clip of
the first and reversing its frames, so both classes of a pair have exactly the same distribution of individual
frames: a model that ignores frame order cannot beat ~50% within a pair. Horizontal-flip augmentation would turn
move_right into move_left and must stay off.

`AppearanceDataset`: classes differ only in what a single frame shows (a shape's colour family, outline or fill
texture); the motion is drawn so that a clip and its reversal are equally likely, so frame order carries no
class information and averaging frame features is the natural model.

Layout written under ``root``: ``{train,val,test}/<class>/<class>_<nnnn>.mp4`` plus ``meta.json`` holding the
generation parameters. ``prepare()`` renders once and reuses the files while the parameters match.
"""

from __future__ import annotations

import abc
import colorsys
import json
import math
import shutil
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from vidlstm.utils.progress import progress

FORMAT_VERSION = 3  # 3: x264 preset ultrafast (2.5x faster rendering)
CLASS_PAIRS: tuple[tuple[str, str], ...] = (
    ("move_right", "move_left"),
    ("grow", "shrink"),
    ("rotate_cw", "rotate_ccw"),
    ("appear", "vanish"),
)
DEMO_CLASSES: tuple[str, ...] = tuple(name for pair in CLASS_PAIRS for name in pair)
SHAPES = ("circle", "square", "triangle", "diamond", "bar")
_SUBPIXEL_BITS = 4  # cv2 drawing with 1/16 px vertex precision, so slow motion is still smooth
APPEARANCE_FORMAT_VERSION = 2
# The appearance set's attributes. Colours are hue families (degrees on the HSV wheel, each video's hue within
# +-COLOUR_SPREAD of its family's); a class names some attributes, every other one is drawn per video.
COLOURS: dict[str, float] = {"red": 0.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 240.0,
                             "magenta": 300.0}
COLOUR_SPREAD = 20.0
TEXTURES = ("solid", "striped")
APPEARANCE_CLASSES: tuple[str, ...] = tuple(f"{colour}_{shape}" for colour in ("red", "yellow", "green", "blue")
                                            for shape in ("circle", "triangle"))
ATTRIBUTES: dict[str, tuple[str, ...]] = {"colour": tuple(COLOURS), "texture": TEXTURES, "shape": SHAPES}


@dataclass(frozen=True)
class SyntheticDataset(abc.ABC):
    """Renders (once) and describes a synthetic dataset; subclasses say which classes exist and how one clip
    of a class is drawn (`classes`, `render_clip`).

    Args:
        root: folder the videos go into.
        train_per_class / val_per_class / test_per_class: videos per class in each split.
        size: frame height and width in pixels.
        min_frames / max_frames: each video's length is drawn uniformly from this range.
        fps: frame rate written into the files.
        max_noise: upper bound of the per-video Gaussian pixel-noise sigma (0-255 scale).
        crf: x264 quality (lower is better).
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

    # Part of meta.json: bump it when the same parameters would render different videos.
    format_version: ClassVar[int]
    # Names the dataset in messages.
    title: ClassVar[str]

    @property
    @abc.abstractmethod
    def classes(self) -> tuple[str, ...]:
        """The class names rendered, in label order."""

    @abc.abstractmethod
    def class_seed(self, name: str) -> int:
        """The number of class ``name`` in the per-video random streams (stable whatever else is rendered)."""

    @abc.abstractmethod
    def render_clip(self, name: str, rng: np.random.Generator) -> np.ndarray:
        """One clip of class ``name`` drawn from ``rng``: uint8 (N, size, size, 3) RGB."""

    def split_dir(self, split: str) -> str:
        return str(Path(self.root) / split)

    def fingerprint(self) -> dict:
        params = asdict(self)
        for key in ("root", "workers"):
            params.pop(key)
        return {"format_version": self.format_version, **params, "classes": list(self.classes)}

    def is_ready(self) -> bool:
        meta = Path(self.root) / "meta.json"
        try:
            return json.loads(meta.read_text()) == self.fingerprint()
        except (OSError, ValueError):
            return False

    def check(self) -> None:
        """Raises ValueError (one line) for parameters that cannot render a dataset."""
        if self.min_frames < 2 or self.max_frames < self.min_frames:
            raise ValueError(f"{self.title} dataset: need 2 <= min_frames <= max_frames, got {self.min_frames}, "
                             f"{self.max_frames}")

    def prepare(self) -> Path:
        """Render the dataset into ``root`` unless an identical one is already there. Returns ``root``."""
        root = Path(self.root)
        if self.is_ready():
            return root
        self.check()
        # Render into a sibling folder and swap it in at the end: an interrupted run leaves no half dataset.
        staging = root.with_name(root.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        jobs = [
            (str(staging / split / name / f"{name}_{i:04d}.mp4"), split, name, i)
            for split, count in (("train", self.train_per_class), ("val", self.val_per_class),
                                 ("test", self.test_per_class))
            for name in self.classes
            for i in range(count)
        ]
        for split in ("train", "val", "test"):
            for name in self.classes:
                (staging / split / name).mkdir(parents=True, exist_ok=True)
        with progress() as bar:
            task = bar.add_task(f"Rendering {self.title} videos into {root}", total=len(jobs))
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
        if name not in self.classes:
            raise ValueError(f"{self.title} dataset: unknown class {name!r}; choose from {self.classes}")
        split_id = ("train", "val", "test").index(split)
        return self.render_clip(name, np.random.default_rng([self.seed, split_id, self.class_seed(name), index]))


@dataclass(frozen=True)
class DemoDataset(SyntheticDataset):
    """The demo: 8 classes in pairs that differ only in temporal order (see the module docstring). Arguments:
    `SyntheticDataset`'s; ``crf`` is kept low so compression does not leak frame order."""

    format_version: ClassVar[int] = FORMAT_VERSION
    title: ClassVar[str] = "demo"

    @property
    def classes(self) -> tuple[str, ...]:
        return DEMO_CLASSES

    def class_seed(self, name: str) -> int:
        return DEMO_CLASSES.index(name)

    def render_clip(self, name: str, rng: np.random.Generator) -> np.ndarray:
        return render_clip(name, rng, self.size, self.min_frames, self.max_frames, self.max_noise)

    def object_track(self, split: str, name: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Where the shape is in every frame of video (split, name, index), from the same random draws as
        `render` (nothing is rendered): float32 boxes (N, 4) x0, y0, x1, y1 in pixels (see `ForwardTrack.boxes`) and
        float32 opacity (N,) in [0, 1] (0: not visible; below 1 only in appear/vanish). The second class of a
        pair gets the first's track reversed in time, as its frames are."""
        if name not in self.classes:
            raise ValueError(f"{self.title} dataset: unknown class {name!r}; choose from {self.classes}")
        rng = np.random.default_rng([self.seed, ("train", "val", "test").index(split), self.class_seed(name), index])
        class_id = DEMO_CLASSES.index(name)
        num_frames = int(rng.integers(self.min_frames, self.max_frames + 1))
        track = draw_forward(CLASS_PAIRS[class_id // 2][0], num_frames, self.size, rng)
        boxes, alpha = track.boxes(self.size), track.alpha.astype(np.float32)
        if class_id % 2 == 1:
            boxes, alpha = boxes[::-1], alpha[::-1]
        return np.ascontiguousarray(boxes), np.ascontiguousarray(alpha)

    def object_boxes(self, split: str, name: str, index: int) -> np.ndarray:
        """float32 (N, 4) x0, y0, x1, y1: the shape's box in every frame (see `object_track`)."""
        return self.object_track(split, name, index)[0]


def appearance_attributes(name: str) -> dict[str, str]:
    """{attribute: value} that class ``name`` fixes: its ``_``-separated words, each a colour (`COLOURS`), a
    texture (`TEXTURES`) or a shape (`SHAPES`), at most one of each, e.g. ``red_circle`` or ``striped``."""
    fixed: dict[str, str] = {}
    for word in name.split("_"):
        attribute = next((a for a, values in ATTRIBUTES.items() if word in values), None)
        if attribute is None or attribute in fixed:
            raise ValueError(f"appearance class {name!r}: {word!r} is not a colour {tuple(COLOURS)}, texture "
                             f"{TEXTURES} or shape {SHAPES}" if attribute is None else
                             f"appearance class {name!r}: names two {attribute}s")
        fixed[attribute] = word
    return fixed


@dataclass(frozen=True)
class AppearanceDataset(SyntheticDataset):
    """Classes that differ only in appearance: each class name fixes some of a shape's colour family, fill
    texture and outline (``red_circle``, ``blue_triangle``, ``striped_square``, ...); the attributes it leaves
    open, and everything else (exact hue, saturation, brightness, background, size, path, spin, noise), are
    drawn per video from one distribution for all classes; frame order is irrelevant (`render_appearance_clip`).
    Arguments: `SyntheticDataset`'s, plus

    Args:
        classes: the class names (see `appearance_attributes`); no two may describe the same video (a class
            must differ from every other in an attribute both fix). A class's videos do not depend on the
            other classes.
    """

    train_per_class: int = 24
    val_per_class: int = 16
    test_per_class: int = 32
    max_noise: float = 24.0
    classes: tuple[str, ...] = APPEARANCE_CLASSES  # type: ignore[assignment]  # a field here, a property above

    format_version: ClassVar[int] = APPEARANCE_FORMAT_VERSION
    title: ClassVar[str] = "appearance"

    def __post_init__(self) -> None:
        # Configs hand over lists (Hydra ListConfig): keep a plain, hashable tuple of names.
        object.__setattr__(self, "classes", tuple(str(name) for name in self.classes))
        if len(self.classes) < 2:
            raise ValueError(f"appearance dataset: needs 2 or more classes, got {list(self.classes)}")
        fixed = [appearance_attributes(name) for name in self.classes]
        for i, a in enumerate(fixed):
            for j in range(i):
                if all(a[k] == fixed[j][k] for k in a.keys() & fixed[j].keys()):
                    raise ValueError(f"appearance dataset: classes {self.classes[j]!r} and {self.classes[i]!r} "
                                     "can describe the same video (make them differ in an attribute both name)")

    def class_seed(self, name: str) -> int:
        return zlib.crc32(name.encode())

    def render_clip(self, name: str, rng: np.random.Generator) -> np.ndarray:
        return render_appearance_clip(name, rng, self.size, self.min_frames, self.max_frames, self.max_noise)


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


@dataclass(frozen=True)
class ForwardTrack:
    """The drawn parameters of one clip of the first class of a pair: per-frame centre ``cx``/``cy``,
    circumradius ``radius``, ``angle`` (degrees) and opacity ``alpha`` (each (N,)), plus the shape, its colour
    and the background (RGB (3,), 0-255)."""

    shape: str
    background: np.ndarray
    colour: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    alpha: np.ndarray

    def boxes(self, size: int) -> np.ndarray:
        """float32 (N, 4) x0, y0, x1, y1: the shape's bounding box in each frame, in pixels with pixel (i, j)
        covering [i, i + 1] x [j, j + 1] (cv2 draws with pixel centres on integers, hence the half-pixel
        shift), cut to the frame [0, size]."""
        boxes = np.empty((len(self.cx), 4), np.float32)
        for i in range(len(self.cx)):
            pts = _polygon(self.shape, self.cx[i], self.cy[i], self.radius[i], self.angle[i]) + 0.5
            boxes[i] = (*pts.min(axis=0), *pts.max(axis=0))
        return np.clip(boxes, 0.0, float(size))


def render_forward(kind: str, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of the first class of a pair, float32 (N, size, size, 3) before noise."""
    track = draw_forward(kind, num_frames, size, rng)
    frames = np.empty((num_frames, size, size, 3), np.float32)
    for i in range(num_frames):
        m = _shape_mask(size, track.shape, track.cx[i], track.cy[i], track.radius[i], track.angle[i])[..., None]
        m = m * track.alpha[i]
        frames[i] = track.background * (1 - m) + track.colour * m
    return frames


def draw_forward(kind: str, num_frames: int, size: int, rng: np.random.Generator) -> ForwardTrack:
    """The random draws of `render_forward` (the same numbers in the same order), without drawing pixels."""
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
    return ForwardTrack(shape, background, colour, cx, cy, radius, angle, alpha)


def render_appearance_clip(name: str, rng: np.random.Generator, size: int = 64, min_frames: int = 20,
                           max_frames: int = 32, max_noise: float = 24.0, reverse: bool = False) -> np.ndarray:
    """One noisy clip of appearance class ``name`` (see `appearance_attributes`), uint8 (N, size, size, 3).

    A shape of the class's colour family, texture and outline (each drawn at random where the class leaves it
    open) glides in a straight line from a start to an end point over a dark background while turning from a
    start to an end angle. Start and end (point and angle) are drawn independently from the same distribution,
    so a clip and its time reversal (the same draw with start and end swapped) are equally likely: frame order
    says nothing about the class. ``reverse=True`` renders that swapped draw (every random number is drawn in
    the same order), i.e. the clip backwards; the noise is drawn afterwards either way.
    """
    fixed = appearance_attributes(name)
    # Draw every attribute, then keep the class's own: the random stream does not depend on the class.
    drawn = {attribute: str(rng.choice(values)) for attribute, values in ATTRIBUTES.items()}
    colour_name, texture, shape = ({**drawn, **fixed}[a] for a in ("colour", "texture", "shape"))
    num_frames = int(rng.integers(min_frames, max_frames + 1))
    hue = (COLOURS[colour_name] + rng.uniform(-COLOUR_SPREAD, COLOUR_SPREAD)) % 360.0
    colour = _hsv_to_rgb(hue, rng.uniform(0.5, 0.9), rng.uniform(0.7, 1.0))
    background = _hsv_to_rgb(rng.uniform(0.0, 360.0), rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.35))
    shade = colour * 0.55  # the stripes' second colour
    radius = rng.uniform(0.14, 0.22) * size
    start, end = rng.uniform(radius, size - radius, size=(2, 2))
    angles = rng.uniform(0.0, 360.0, size=2)
    period, stripe_angle, phase = rng.uniform(5.0, 8.0), rng.uniform(0.0, 180.0), rng.uniform(0.0, 2 * math.pi)
    if reverse:
        start, end, angles = end, start, angles[::-1]
    t = np.linspace(0.0, 1.0, num_frames)[:, None]
    centres = start + (end - start) * t
    angle = angles[0] + (angles[1] - angles[0]) * t[:, 0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = np.empty((num_frames, size, size, 3), np.float32)
    for i in range(num_frames):
        (cx, cy), a = centres[i], angle[i]
        m = _shape_mask(size, shape, cx, cy, radius, a)[..., None]
        fill: np.ndarray = colour
        if texture == "striped":  # stripes fixed to the shape: they turn and move with it
            theta = math.radians(a + stripe_angle)
            across = (xs - cx) * math.cos(theta) + (ys - cy) * math.sin(theta)
            fill = np.where((np.sin(2 * math.pi * across / period + phase) >= 0)[..., None], colour, shade)
        frames[i] = background * (1 - m) + fill * m
    noise = rng.normal(0.0, rng.uniform(0.0, max_noise), size=frames.shape)
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def _hsv_to_rgb(hue_deg: float, saturation: float, value: float) -> np.ndarray:
    """RGB (3,) float on the 0-255 scale of a colour given as hue in degrees, saturation and value in [0, 1]."""
    return np.array(colorsys.hsv_to_rgb(hue_deg / 360.0, saturation, value)) * 255.0


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 15, crf: int = 10, preset: str = "ultrafast") -> None:
    """Encode uint8 (N, H, W, 3) RGB frames as H.264 (yuv420p) with PyAV. ``preset`` is x264's speed/size
    trade-off; at the low ``crf`` used here the file is near-lossless whatever the preset, so the fastest one
    (I and P frames only) is the default."""
    import av

    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
