"""Why did the model decide that: *where* in each frame (Grad-CAM on the CNN) and *when* in the clip (temporal
importance of each frame to the recurrent head), plus the class probabilities after each time step.

Everything works on a trained `CNNLSTM` whatever its encoder (torchvision, timm, tiny) and head (LSTM, GRU,
BiLSTM, attention/mean/max pooling, no recurrence, custom cells):

* Spatial map (`grad_cam`): Grad-CAM on the last convolutional feature map of the frame encoder, i.e. the last
  module inside ``encoder.trunk`` holding a convolution whose output is a 4-D (N, C, h, w) map with h * w > 1
  (`cam_layer`; for a CNN that is the trunk's own output, the map its global pooling reads; a transformer
  without a map falls back to its patch embedding). The gradient of the target class logit flows back through
  the classifier, temporal pooling, the recurrent head and the encoder's pooling/projection into that map: per
  frame ``cam = ReLU(sum_c mean_hw(dlogit/dA_c) * A_c)``. The maps are mapped back onto the decoded frames (through
  the eval transform's resize and centre crop; pixels the model never saw get 0) and normalised to [0, 1] by
  the clip's maximum (one scale for the whole clip, so faint frames stay faint).
* Temporal importance (`temporal_importance`), by default ``sequential`` occlusion: the importance of frame t is
  how much adding it to the frames before it raised the target class's probability,
  ``max(0, p_t - p_{t-1})`` with ``p_t`` the probability from the clip's first t + 1 frames (the ``probs``
  timeline below) and ``p_{-1} = 1 / C`` (no evidence yet); equivalently the drop of ``p_t`` when frame t is
  occluded from its prefix. Normalised to sum 1 (uniform when the probability never rises). It answers "when
  did the evidence for the class arrive" and is exactly the rises of the target line in the rendered timeline.
  Why not the two usual choices (measured on the demo with a tiny-CNN + LSTM checkpoint, appear/vanish test
  clips, importance mass on the frames where the object is fading in or out; README "Explain a prediction"):
  ``occlusion`` (frame t's features replaced by the clip's mean feature, drop of the target logit) gives
  ~0 to exactly the transition frames, because a half-faded object's features *are* close to the clip mean, so
  replacing them changes nothing (0.42 of the mass on transition frames, below their 0.66 share of the
  frames; a random network: 0.45); ``gradient`` (|gradient x (feature - clip mean)|) inherits that and the
  LSTM's recency (0.49; random 0.49). Sequential occlusion: 0.87 (random: 0.19). Both are kept as options.
  It costs one batched head call (the T prefixes with ``lengths``); the CNN runs once.
* Probabilities per step (`step_probabilities`): row t is the softmax of the head applied to the clip's first
  t + 1 frames (the same head with ``lengths = t + 1``). For a unidirectional recurrent head with ``last``
  pooling that is exactly its output after step t; for heads without a causal per-step output (bidirectional,
  attention/mean/max pooling, no recurrence) it is what the model would predict had the clip ended there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidlstm.data.video import DEFAULT_TIMEOUT_S
from vidlstm.inference.predictor import Predictor

IMPORTANCE_METHODS = ("sequential", "occlusion", "gradient")


@dataclass
class Explanation:
    """One explained clip. Shapes: T explained frames of the decoded size H x W, C classes.

    Attributes:
        path: the video.
        frames: uint8 (T, H, W, 3) RGB, the decoded frames the clip used.
        frame_indices: int64 (T,), their indices in the video (the eval sampler's choice).
        cam: float32 (T, H, W) in [0, 1], Grad-CAM per frame at the decoded size (one scale per clip).
        importance: float32 (T,), >= 0, sums to 1 (uniform when no frame matters).
        probs: float32 (T, C), class probabilities after each step (see the module docstring).
        clip_probs: float32 (C,), the probabilities of the whole clip.
        target: index of the class explained (the prediction unless one was named).
        class_names: the checkpoint's classes.
    """

    path: str
    frames: np.ndarray
    frame_indices: np.ndarray
    cam: np.ndarray
    importance: np.ndarray
    probs: np.ndarray
    clip_probs: np.ndarray
    target: int
    class_names: list[str] = field(default_factory=list)

    @property
    def predicted(self) -> int:
        return int(self.clip_probs.argmax())

    def save_npz(self, path: str | os.PathLike) -> None:
        """``cam`` (T, H, W), ``importance`` (T,), ``probs`` (T, C), ``frame_indices`` (T,), plus ``target``,
        ``predicted``, ``clip_probs`` (C,) and ``class_names`` (C,)."""
        np.savez_compressed(path, cam=self.cam.astype(np.float32), importance=self.importance.astype(np.float32),
                            probs=self.probs.astype(np.float32), frame_indices=self.frame_indices.astype(np.int64),
                            clip_probs=self.clip_probs.astype(np.float32), target=np.int64(self.target),
                            predicted=np.int64(self.predicted), class_names=np.array(self.class_names))


def cam_layer(encoder: nn.Module, frame: torch.Tensor) -> nn.Module:
    """The module whose output Grad-CAM reads: the last module of ``encoder.trunk`` (in order of completion,
    so the trunk itself when its output qualifies) that holds a convolution and returns a 4-D (N, C, h, w) map
    with h * w > 1. For a CNN that is the trunk, whose map the encoder pools; when the trunk ends on a 1 x 1 map
    (a large-stride CNN on small frames) the last stage with room for a location; for a transformer without a
    feature map (ViT: one class-token vector per frame) its patch embedding (coarser: before every attention
    block). Modules without a convolution are skipped: attention layers pass 4-D (N, heads, tokens, dim)
    tensors that are not maps. Falls back to the trunk itself (a flat map). ``frame``: (1, 3, H, W), one input
    frame as the model gets it."""
    trunk = encoder.trunk
    last: list[nn.Module] = []
    convolutional = {id(m) for m in trunk.modules() if any(isinstance(c, nn.Conv2d) for c in m.modules())}

    def hook(module: nn.Module, _args: Any, output: Any) -> None:
        if (id(module) in convolutional and isinstance(output, torch.Tensor) and output.dim() == 4
                and output.shape[2] * output.shape[3] > 1):
            last[:] = [module]

    handles = [m.register_forward_hook(hook) for m in trunk.modules()]
    try:
        with torch.no_grad():
            trunk(frame.contiguous(memory_format=getattr(encoder, "memory_format", torch.contiguous_format)))
    finally:
        for handle in handles:
            handle.remove()
    return last[0] if last else trunk


@contextlib.contextmanager
def capture(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collects ``module``'s outputs (one per call: the encoder may run frames in chunks) while in the block."""
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def _head_on_prefixes(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """(T, D) features -> (T, C) logits, row t from the first t + 1 frames (``lengths`` masks the rest)."""
    t = features.shape[0]
    lengths = torch.arange(1, t + 1, device=features.device)
    return head(features[None].expand(t, -1, -1), lengths)


def step_probabilities(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """(T, D) frame features -> (T, C): class probabilities from the first t + 1 frames (module docstring)."""
    with torch.no_grad():
        return _head_on_prefixes(head, features).float().softmax(-1)


def temporal_importance(head: nn.Module, features: torch.Tensor, target: int, method: str = "sequential"
                        ) -> torch.Tensor:
    """(T, D) frame features -> (T,) importance of each frame for class ``target``, >= 0 and summing to 1
    (uniform when every value is 0). ``sequential``: rise of the target probability when frame t joins the
    frames before it (p_{-1} = 1 / C); ``occlusion``: drop of the target logit when frame t's features are
    replaced by the clip's mean feature; ``gradient``: |d logit / d x_t . (x_t - mean)|. See the module
    docstring for why ``sequential`` is the default."""
    if method not in IMPORTANCE_METHODS:
        raise ValueError(f"unknown importance method {method!r}; choose from {IMPORTANCE_METHODS}")
    features = features.detach()
    t = features.shape[0]
    mean = features.mean(0, keepdim=True)
    if method == "sequential":
        with torch.no_grad():
            all_probs = _head_on_prefixes(head, features).float().softmax(-1)
        probs = all_probs[:, target]
        before = torch.cat([probs.new_full((1,), 1.0 / all_probs.shape[1]), probs[:-1]])
        scores = (probs - before).clamp_min(0)
    elif method == "occlusion":
        with torch.no_grad():
            full = head(features[None])[0, target]
            occluded = features[None].repeat(t, 1, 1)
            steps = torch.arange(t, device=features.device)
            occluded[steps, steps] = mean
            scores = (full - head(occluded)[:, target]).clamp_min(0)
    else:
        x = features.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(head(x[None])[0, target], x)
        scores = (grad * (features - mean)).sum(-1).abs()
    scores = scores.float()
    total = scores.sum()
    return scores / total if total > 0 else torch.full_like(scores, 1.0 / t)


def grad_cam(net: nn.Module, clip: torch.Tensor, target: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Grad-CAM of one clip.

    Args:
        net: a `CNNLSTM` in eval mode.
        clip: float (T, 3, h, w), the transformed clip.
        target: class to explain; None: the predicted one.

    Returns:
        cam (T, h', w') >= 0 at the feature map's resolution (not normalised), frame features (T, D)
        (detached), clip logits (C,) (detached), target.
    """
    layer = cam_layer(net.encoder, clip[:1])
    clip = clip[None].detach().clone().requires_grad_(True)  # gradients reach the map even if the CNN is frozen
    with torch.enable_grad(), capture(layer) as maps:
        features = net.encoder(clip)
        logits = net.head(features)[0]
        target = int(logits.argmax()) if target is None else int(target)
        grads = torch.autograd.grad(logits[target], maps, allow_unused=True)
    acts = torch.cat([m.detach() for m in maps]).float()
    grads_t = torch.cat([g if g is not None else torch.zeros_like(m) for g, m in zip(grads, maps, strict=True)]).float()
    if acts.dim() != 4:
        raise ValueError(f"Grad-CAM layer {type(layer).__name__} gives shape {tuple(acts.shape)}, not (N, C, h, w)")
    weights = grads_t.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(1))
    return cam, features[0].detach(), logits.detach(), target


def crop_box(height: int, width: int, image_size: int, resize: int | None) -> tuple[int, int, int, int, int, int]:
    """Where the eval transform's crop lies: (resized height, resized width, top, left) of the centre crop of
    ``image_size`` in the frame resized so its short side is ``resize or image_size``, plus that crop's size
    (image_size, image_size). Matches torchvision's Resize(short side) + CenterCrop."""
    short = resize or image_size
    if height <= width:
        rh, rw = short, int(short * width / height)
    else:
        rh, rw = int(short * height / width), short
    top, left = round((rh - image_size) / 2.0), round((rw - image_size) / 2.0)
    return rh, rw, top, left, image_size, image_size


def cam_to_frames(cam: torch.Tensor, height: int, width: int, image_size: int, resize: int | None = None
                  ) -> np.ndarray:
    """(T, h', w') Grad-CAM -> float32 (T, height, width) in [0, 1] on the decoded frames: upsampled
    (bilinear) onto the model's crop, placed where the crop lies in the resized frame (zero elsewhere),
    resized to the frame, then divided by the clip's maximum."""
    rh, rw, top, left, ch, cw = crop_box(height, width, image_size, resize)
    crop = F.interpolate(cam[:, None].float(), size=(ch, cw), mode="bilinear", align_corners=False)[:, 0]
    canvas = torch.zeros(cam.shape[0], rh, rw)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + ch, rh), min(left + cw, rw)
    canvas[:, y0:y1, x0:x1] = crop[:, y0 - top:y1 - top, x0 - left:x1 - left]
    full = F.interpolate(canvas[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    full = full.clamp_min(0)
    peak = full.max()
    return (full / peak if peak > 0 else full).numpy().astype(np.float32)


class Explainer:
    """Explains a checkpoint's predictions on videos, decoding and sampling exactly as `Predictor` (its eval
    sampler over the whole video: the frames validation scored). Build with `Explainer.from_checkpoint`."""

    def __init__(self, predictor: Predictor, image_size: int, resize: int | None = None,
                 importance: str = "sequential") -> None:
        if importance not in IMPORTANCE_METHODS:
            raise ValueError(f"unknown importance method {importance!r}; choose from {IMPORTANCE_METHODS}")
        self.predictor, self.image_size, self.resize, self.importance = predictor, image_size, resize, importance
        self.net = predictor.net.float().eval()
        self.class_names = predictor.class_names

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", backend: str = "auto",
                        timeout_s: float | None = DEFAULT_TIMEOUT_S, importance: str = "sequential") -> Explainer:
        """Network, classes, clip length, sampler and transform from the checkpoint (loaded safely by
        `Predictor.from_checkpoint`: ``weights_only`` and the model registry)."""
        from vidlstm.common.checkpoint import load_checkpoint

        predictor = Predictor.from_checkpoint(path, device, num_clips=1, top_k=1, backend=backend,
                                              timeout_s=timeout_s)
        data = load_checkpoint(path)["vidlstm"]["config"]["data"]
        resize = (data.get("eval_transform") or {}).get("resize")
        return cls(predictor, data["image_size"], resize, importance)

    def target_index(self, target: str | int | None) -> int | None:
        """A class name (or index) -> its index; None stays None. ValueError names the known classes."""
        if target is None or isinstance(target, int):
            return target
        if target not in self.class_names:
            raise ValueError(f"target {target!r} is not a class of this checkpoint; known: {self.class_names}")
        return self.class_names.index(target)

    def frame_indices(self, num_frames: int) -> list[int]:
        """The frames the clip of a video with ``num_frames`` frames uses (the checkpoint's eval sampler)."""
        return self.predictor.window_indices(0, num_frames)

    def explain_video(self, path: str | os.PathLike, target: str | int | None = None) -> Explanation:
        """Decode the clip of ``path`` and explain it. Raises `VideoDecodeError` for an unreadable video."""
        with self.predictor.open(path) as reader:
            indices = self.frame_indices(reader.num_frames)
            frames = reader.get_frames(indices)
        return self.explain_frames(frames, indices, target, str(path))

    def explain_frames(self, frames: torch.Tensor, indices: Sequence[int], target: str | int | None = None,
                       path: str = "") -> Explanation:
        """uint8 (T, 3, H, W) decoded frames (and their indices) -> `Explanation`."""
        device = self.predictor.device
        clip = self.predictor.transform(frames).to(device)
        cam, features, logits, target_index = grad_cam(self.net, clip, self.target_index(target))
        height, width = frames.shape[-2:]
        return Explanation(
            path=path,
            frames=frames.permute(0, 2, 3, 1).cpu().numpy(),
            frame_indices=np.asarray(indices, dtype=np.int64),
            cam=cam_to_frames(cam.cpu(), int(height), int(width), self.image_size, self.resize),
            importance=temporal_importance(self.net.head, features, target_index, self.importance).cpu().numpy(),
            probs=step_probabilities(self.net.head, features).cpu().numpy(),
            clip_probs=logits.float().softmax(-1).cpu().numpy(),
            target=target_index,
            class_names=list(self.class_names),
        )


def output_paths(output: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(overlay video/GIF, filmstrip .png, arrays .npz): the last two are ``output``'s stem beside it."""
    output = Path(output)
    return output, output.with_suffix(".png"), output.with_suffix(".npz")
