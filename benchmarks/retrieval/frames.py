"""Frames of a split's videos, streamed from disk one video at a time (a torch ``Dataset``).

Where the frames of a canonical split are (``benchmarks.retrieval.prepare`` writes one of them):

* ``<split>.frames.npy``: packed uint8 ``(videos, T, H, W, C)`` in the split's video order,
  memory-mapped (each worker opens it once and reads one video per item);
* ``<split>.frames.json``: ``{"root": DIR, "layout": "npy" | "jpg"}`` naming frames pre-extracted
  per video, read in place: ``DIR/<video_id>.npy`` (uint8 ``(T, H, W, C)``) or
  ``DIR/<video_id>/frame_XXXX.jpg`` (sorted by name; needs Pillow).

``VideoFrames(...).prepared(frames, transform)`` takes ``frames`` of a video uniformly over
what is stored (``np.linspace`` over the indices, CLIP4Clip's test-time sampling) and applies
``transform`` (:class:`ClipPreprocess` for CLIP towers); without them an item is the stored
uint8 array as a tensor. :func:`video_loader` wraps a dataset in a ``DataLoader`` (workers a
setting), either in order (evaluation) or along given batches of video indices (training).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from benchmarks.retrieval.loaders import RetrievalDataError

LAYOUTS = ("npy", "jpg")
JPG_GLOB = "frame_*.jpg"


def uniform_indices(n: int, k: int) -> np.ndarray:
    """``k`` frame indices spread uniformly over ``n`` stored frames (first and last included)."""
    return np.linspace(0, n - 1, k).round().astype(np.int64)


def _read_jpgs(folder: Path, k: int | None) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RetrievalDataError(
            f"{folder}: reading frame_*.jpg needs Pillow (pip install pillow), or store "
            "<video_id>.npy frames instead"
        ) from e
    files = sorted(folder.glob(JPG_GLOB))
    if not files:
        raise RetrievalDataError(f"{folder}: no {JPG_GLOB} frames")
    if k is not None:
        files = [files[i] for i in uniform_indices(len(files), k)]
    frames = []
    for f in files:
        with Image.open(f) as im:
            frames.append(np.asarray(im.convert("RGB")))
    return np.stack(frames)


class VideoFrames(Dataset):
    """One item per video: its frames as a tensor (see the module docstring for the layouts).

    ``source`` is an in-memory uint8 array ``(videos, T, H, W, C)``, the path of a packed
    ``.npy`` or ``(layout, root)`` for per-video files. Picklable without its data (workers
    open the files themselves).
    """

    def __init__(self, videos: list[str], source, frames: int | None = None, transform=None):
        self.videos = list(videos)
        self.source = source
        self.frames = frames
        self.transform = transform
        self._arr = source if isinstance(source, np.ndarray) else None
        if isinstance(source, np.ndarray) and len(source) != len(self.videos):
            raise RetrievalDataError(f"{len(source)} frame arrays for {len(self.videos)} videos")

    def prepared(self, frames: int | None, transform=None) -> VideoFrames:
        """The same videos, ``frames`` per video sampled uniformly, ``transform`` applied."""
        return VideoFrames(self.videos, self.source, frames, transform)

    def __getstate__(self):
        state = dict(self.__dict__)
        if not isinstance(self.source, np.ndarray):
            state["_arr"] = None  # a memory map is reopened in the worker, not copied
        return state

    def __len__(self) -> int:
        return len(self.videos)

    def raw(self, i: int) -> np.ndarray:
        """The stored frames of video ``i`` (uint8 ``(T, H, W, C)``), ``frames`` of them."""
        if isinstance(self.source, (str, Path)):
            if self._arr is None:
                self._arr = np.load(self.source, mmap_mode="r", allow_pickle=False)
            x = self._arr[i]
        elif self._arr is not None:
            x = self._arr[i]
        else:
            layout, root = self.source
            vid = self.videos[i]
            if layout == "jpg":
                return _read_jpgs(Path(root) / vid, self.frames)
            path = Path(root) / f"{vid}.npy"
            if not path.is_file():
                raise RetrievalDataError(f"{root}: no frames for video {vid!r} ({path.name})")
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        if self.frames is not None and x.shape[0] != self.frames:
            x = x[uniform_indices(x.shape[0], self.frames)]
        return np.array(x)  # a writable copy (a memory map is read-only)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(self.raw(int(i)))
        return x if self.transform is None else self.transform(x)


def open_split_frames(data_dir: str | Path, name: str, videos: list[str]) -> VideoFrames:
    """The frames of canonical split ``name`` (packed ``.frames.npy`` or a ``.frames.json``)."""
    d = Path(data_dir)
    packed, index = d / f"{name}.frames.npy", d / f"{name}.frames.json"
    if packed.is_file():
        arr = np.load(packed, mmap_mode="r", allow_pickle=False)
        if arr.shape[0] != len(videos):
            raise RetrievalDataError(f"{packed}: {arr.shape[0]} videos, expected {len(videos)}")
        return VideoFrames(videos, packed)
    if index.is_file():
        spec = json.loads(index.read_text(encoding="utf-8"))
        if spec.get("layout") not in LAYOUTS or not spec.get("root"):
            raise RetrievalDataError(
                f"{index}: layout: {spec.get('layout')!r}: expected one of {list(LAYOUTS)} "
                "and a root"
            )
        return VideoFrames(videos, (spec["layout"], spec["root"]))
    raise RetrievalDataError(f"{d}: no {packed.name} or {index.name} (run the prepare step)")


def as_frames(frames) -> VideoFrames:
    """An in-memory uint8 array (videos first) or a :class:`VideoFrames`, as a dataset."""
    if isinstance(frames, VideoFrames):
        return frames
    arr = np.asarray(frames)
    return VideoFrames([str(i) for i in range(len(arr))], arr)


def _one_thread(_worker: int) -> None:
    """A loader process decodes and resizes one video at a time on one core (the job's threads
    are for the model)."""
    torch.set_num_threads(1)


def video_loader(
    frames: VideoFrames,
    *,
    batch_size: int | None = None,
    batches: list | None = None,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches of stacked frames: in order (``batch_size``) or along ``batches`` of indices.

    The loader seeds its workers from its own generator, so creating it leaves torch's global
    random state (dropout, initialisation) as it was: a run does not depend on the loader."""
    kw = dict(
        num_workers=workers, pin_memory=pin_memory, generator=torch.Generator().manual_seed(0)
    )
    if workers:
        kw.update(prefetch_factor=2, persistent_workers=False, worker_init_fn=_one_thread)
    if batches is not None:
        return DataLoader(frames, batch_sampler=batches, **kw)
    return DataLoader(frames, batch_size=batch_size, shuffle=False, **kw)


class ClipPreprocess:
    """CLIP's image preprocessing as the checkpoint configures it (``preprocessor_config.json``
    of a CLIP folder: resize the shortest edge bicubically, centre crop, rescale, normalise),
    on uint8 ``(T, H, W, C)`` frames -> float32 ``(T, C, crop, crop)``.

    Uses ``transformers.CLIPImageProcessor`` loaded from the folder when it can be imported
    (it needs Pillow and torchvision); otherwise the same steps in torch, as transformers' fast
    CLIP processor does them (``interpolate(mode="bicubic", antialias=True)``).
    """

    def __init__(self, config: dict, use_hf: bool | None = None):
        self.config = config
        size = config.get("size", {"shortest_edge": 224})
        self.shortest = size.get("shortest_edge") if isinstance(size, dict) else int(size)
        crop = config.get("crop_size", {"height": 224, "width": 224})
        self.crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
        self.do_resize = config.get("do_resize", True)
        self.do_crop = config.get("do_center_crop", True)
        self.rescale = config.get("rescale_factor", 1 / 255) if config.get("do_rescale", 1) else 1
        self.mean = torch.tensor(config.get("image_mean", [0.48145466, 0.4578275, 0.40821073]))
        self.std = torch.tensor(config.get("image_std", [0.26862954, 0.26130258, 0.27577711]))
        self.do_norm = config.get("do_normalize", True)
        self.hf = None
        if use_hf is not False:
            try:
                from transformers import CLIPImageProcessor

                self.hf = CLIPImageProcessor.from_dict(config)
            except ImportError:
                if use_hf:
                    raise
        self.kind = "transformers.CLIPImageProcessor" if self.hf is not None else "torch"

    @classmethod
    def from_folder(cls, folder: str | Path, use_hf: bool | None = None) -> ClipPreprocess:
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            raise RetrievalDataError(f"{path}: not found (a CLIP checkpoint folder has one)")
        return cls(json.loads(path.read_text(encoding="utf-8")), use_hf)

    def save(self, folder: str | Path) -> None:
        from claimbench.io import atomic_write_json

        atomic_write_json(Path(folder) / "preprocessor_config.json", self.config)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if self.hf is not None:
            imgs = list(frames.numpy())
            return self.hf(images=imgs, return_tensors="pt")["pixel_values"].float()
        x = frames.permute(0, 3, 1, 2).float()  # (T, C, H, W), 0..255
        if self.do_resize:
            h, w = x.shape[-2:]
            s = self.shortest / min(h, w)
            size = (max(1, int(h * s)), max(1, int(w * s)))
            if size != (h, w):
                x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
                x = x.round().clamp(0, 255)  # back to pixel values, as a uint8 image would be
        if self.do_crop:
            ch, cw = self.crop
            h, w = x.shape[-2:]
            top, left = max(0, math.floor((h - ch) / 2)), max(0, math.floor((w - cw) / 2))
            x = x[..., top : top + ch, left : left + cw]
        x = x * self.rescale
        if self.do_norm:
            x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        return x.contiguous()
