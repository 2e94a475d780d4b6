"""Loaders for text-video retrieval annotations in the MSR-VTT formats, and for frames.

Annotation formats (auto-detected from the content, not the file name):

* ``msrvtt_json``: CLIP4Clip's ``MSRVTT_data.json``, ``{"videos": [{"video_id", "split", ...}],
  "sentences": [{"caption", "video_id", "sen_id"}]}``; select videos with ``split`` (e.g.
  ``test`` for the 3k full split) and/or a video-id csv (``MSRVTT_train.9k.csv``);
* ``jsfusion_csv``: ``MSRVTT_JSFUSION_test.csv`` (``key,vid_key,video_id,sentence``; the 1k-A test);
* ``jsonl``: CLIP-ViP / PIG JSON Lines, ``{"clip_id": ..., "text": str | [str, ...]}``.

Frames: pre-extracted, as ``<video_id>.npy`` per video (uint8 ``(T, H, W, C)``), as a folder
``<video_id>/frame_XXXX.jpg`` per video, or packed ``<name>.npy`` (videos x ...) with
``<name>.ids.json`` beside it (``benchmarks.retrieval.frames`` streams them). Raw ``.mp4``
decoding is not done here.

Every bad input raises :class:`RetrievalDataError` naming the file and the entry.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from claimbench.errors import ClaimbenchError

FORMATS = ("msrvtt_json", "jsfusion_csv", "jsonl")


class RetrievalDataError(ClaimbenchError):
    """An annotation, frames or embedding file is malformed or inconsistent."""


@dataclass
class Split:
    """Captions in file order, each with its video; videos in first-appearance order."""

    source: str
    fmt: str
    captions: list[str] = field(default_factory=list)
    caption_video: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)

    def add(self, video: str, caption: str) -> None:
        if video not in self._index:
            self._index[video] = len(self.videos)
            self.videos.append(video)
        self.captions.append(caption)
        self.caption_video.append(video)

    def __post_init__(self) -> None:
        self._index: dict[str, int] = {}

    def caption_video_index(self) -> np.ndarray:
        return np.array([self._index[v] for v in self.caption_video], dtype=np.int64)


def _caption(value, path: Path, where: str) -> str:
    """A caption is a text-to-video query: a non-empty string. MSR-VTT and the PIG JSON Lines
    have no empty captions, so a null or blank one is broken data, refused with its row."""
    if not isinstance(value, str) or not value.strip():
        raise RetrievalDataError(
            f"{path}: {where}: {json.dumps(value)}: a caption must be a non-empty string"
        )
    return value


def detect_format(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise RetrievalDataError(f"{path}: annotation file not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    head = text.lstrip()[:1]
    if head == "{":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and "videos" in obj and "sentences" in obj:
            return "msrvtt_json"
        first = text.lstrip().splitlines()[0]
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and "clip_id" in row and "text" in row:
            return "jsonl"
    else:
        header = next(csv.reader([text.splitlines()[0]]), []) if text.strip() else []
        if "video_id" in header and "sentence" in header:
            return "jsfusion_csv"
    raise RetrievalDataError(
        f"{path}: not a supported annotation format (expected one of {', '.join(FORMATS)}: "
        "MSRVTT_data.json with 'videos' and 'sentences', a csv with columns video_id and "
        "sentence, or JSON Lines with 'clip_id' and 'text')"
    )


def _video_filter(path: str | Path | None) -> set[str] | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise RetrievalDataError(f"{path}: video list not found")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if "video_id" not in (reader.fieldnames or []):
            raise RetrievalDataError(f"{path}: video list needs a 'video_id' column")
        return {row["video_id"] for row in reader}


def load_annotations(
    path: str | Path, *, split: str | None = None, videos_csv: str | Path | None = None
) -> Split:
    """Read one annotation file (format auto-detected) into a :class:`Split`."""
    path = Path(path)
    fmt = detect_format(path)
    keep = _video_filter(videos_csv)
    out = Split(str(path), fmt)
    if fmt == "msrvtt_json":
        obj = json.loads(path.read_text(encoding="utf-8"))
        known, order = set(), []
        for i, v in enumerate(obj["videos"]):
            if not isinstance(v, dict) or "video_id" not in v:
                raise RetrievalDataError(f"{path}: videos[{i}] has no 'video_id'")
            if split is not None and v.get("split") != split:
                continue
            if keep is not None and v["video_id"] not in keep:
                continue
            known.add(v["video_id"])
            order.append(v["video_id"])
        all_ids = {v["video_id"] for v in obj["videos"]}
        by_video: dict[str, list[str]] = {v: [] for v in order}
        for i, s in enumerate(obj["sentences"]):
            if not isinstance(s, dict) or "video_id" not in s or "caption" not in s:
                raise RetrievalDataError(f"{path}: sentences[{i}] needs 'video_id' and 'caption'")
            _caption(s["caption"], path, f"sentences[{i}].caption")
            if s["video_id"] not in all_ids:
                raise RetrievalDataError(
                    f"{path}: sentences[{i}] (sen_id {s.get('sen_id')}) references video "
                    f"{s['video_id']!r}, which is not in 'videos'"
                )
            if s["video_id"] in known:
                by_video[s["video_id"]].append(s["caption"])
        for v in order:
            for c in by_video[v]:
                out.add(v, c)
    elif fmt == "jsfusion_csv":
        with open(path, encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.DictReader(f), start=2):
                if not row.get("video_id"):
                    raise RetrievalDataError(f"{path}: line {i}: video_id: empty video_id")
                _caption(row.get("sentence"), path, f"line {i}: sentence")
                if keep is None or row["video_id"] in keep:
                    out.add(row["video_id"], row["sentence"])
    else:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RetrievalDataError(f"{path}: line {i}: invalid JSON ({e.msg})") from e
                if not isinstance(row, dict) or "clip_id" not in row or "text" not in row:
                    raise RetrievalDataError(f"{path}: line {i}: needs 'clip_id' and 'text'")
                texts = row["text"] if isinstance(row["text"], list) else [row["text"]]
                if not texts:
                    raise RetrievalDataError(f"{path}: line {i}: text: []: no caption")
                listed = isinstance(row["text"], list)
                for j, t in enumerate(texts):
                    _caption(t, path, f"line {i}: text" + (f"[{j}]" if listed else ""))
                if keep is None or row["clip_id"] in keep:
                    for t in texts:
                        out.add(str(row["clip_id"]), str(t))
    if not out.captions:
        raise RetrievalDataError(
            f"{path}: no captions selected (format {fmt}, split={split!r}, videos_csv={videos_csv})"
        )
    return out


class FrameStore:
    """Pre-extracted frames by video id: packed ``<name>.npy`` + ``<name>.ids.json``, or ``<id>.npy``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise RetrievalDataError(f"{self.folder}: frames folder not found")
        self.packed: dict[str, tuple[Path, int]] = {}
        for ids_file in sorted(self.folder.glob("*.ids.json")):
            npy = ids_file.with_name(ids_file.name[: -len(".ids.json")] + ".npy")
            if not npy.is_file():
                raise RetrievalDataError(f"{ids_file}: no {npy.name} beside it")
            for i, vid in enumerate(json.loads(ids_file.read_text(encoding="utf-8"))):
                self.packed.setdefault(vid, (npy, i))

    def has(self, vid: str) -> bool:
        return vid in self.packed or self.per_video_layout(vid) is not None

    def per_video_layout(self, vid: str) -> str | None:
        """``npy`` (``<vid>.npy``), ``jpg`` (``<vid>/frame_*.jpg``) or None (packed / absent)."""
        if (self.folder / f"{vid}.npy").is_file():
            return "npy"
        if (self.folder / vid).is_dir() and any((self.folder / vid).glob("frame_*.jpg")):
            return "jpg"
        return None

    def iter_frames(self, ids: list[str]):
        """The frames of ``ids`` one video at a time (packed files memory-mapped once)."""
        arrays: dict[Path, np.ndarray] = {}
        for vid in ids:
            if vid in self.packed:
                npy, i = self.packed[vid]
                if npy not in arrays:
                    arrays[npy] = np.load(npy, mmap_mode="r", allow_pickle=False)
                yield np.asarray(arrays[npy][i])
            elif (self.folder / f"{vid}.npy").is_file():
                yield np.load(self.folder / f"{vid}.npy", allow_pickle=False)
            else:
                raise RetrievalDataError(f"{self.folder}: no frames for video {vid!r}")

    def check(self, split: Split) -> None:
        """Every caption's video has frames; the error names annotation file, entry and id."""
        for i, vid in enumerate(split.caption_video):
            if not self.has(vid):
                raise RetrievalDataError(
                    f"{split.source}: caption {i} ({split.captions[i][:60]!r}) references video "
                    f"{vid!r}, which has no frames in {self.folder}"
                )

    def load(self, ids: list[str]) -> np.ndarray:
        arrays: dict[Path, np.ndarray] = {}
        out = []
        for vid in ids:
            if vid in self.packed:
                npy, i = self.packed[vid]
                if npy not in arrays:
                    arrays[npy] = np.load(npy, mmap_mode="r", allow_pickle=False)
                out.append(np.asarray(arrays[npy][i]))
            elif (self.folder / f"{vid}.npy").is_file():
                out.append(np.load(self.folder / f"{vid}.npy", allow_pickle=False))
            else:
                raise RetrievalDataError(f"{self.folder}: no frames for video {vid!r}")
        shapes = {a.shape for a in out}
        if len(shapes) > 1:
            raise RetrievalDataError(f"{self.folder}: frames of different shapes {sorted(shapes)}")
        return np.stack(out)
