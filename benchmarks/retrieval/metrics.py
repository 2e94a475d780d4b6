"""Retrieval metrics from a text x video similarity matrix (CLIP4Clip / X-CLIP / X-Pool conventions).

* rank = 0-based position of the ground-truth column after sorting a query's scores in
  descending order; ties are counted **by position** (stable sort: among equal scores the
  lower column index comes first), i.e. the double-argsort of X-Pool, not CLIP4Clip's
  optimistic ``sort - diag`` trick;
* R@K = 100 * fraction of queries with rank < K; MdR = median(rank) + 1; MnR = mean(rank) + 1
  (1-based, lower is better);
* several captions per video: every caption is a text-to-video query (its own video among all
  videos); video-to-text follows X-Pool ``v2t_metrics``: the similarity of video j to caption
  group i is the max over the captions of video i, and video j is ranked over the groups.
  ``pad_by_video`` builds X-Pool's ``videos x max_caps x videos`` tensor padded with -inf.
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)
TIES = "by position (stable descending sort, lower column index first)"
V2T_CONVENTION = "xpool: max over each candidate video's captions, rank on the diagonal"


def ranks(sim: np.ndarray, gt: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """0-based rank of column ``gt[i]`` in row ``i`` of ``sim`` (descending, ties by position)."""
    sim = np.asarray(sim, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.int64)
    if sim.ndim != 2 or gt.shape != (sim.shape[0],):
        raise ValueError(f"ranks: sim {sim.shape} and gt {gt.shape} do not match")
    if np.isnan(sim).any():
        raise ValueError("ranks: similarity matrix contains NaN")
    # Position after a stable descending sort = scores above the ground truth + equal scores
    # in lower columns: counted in row blocks (no sort, no rows x columns index array; the
    # 59,800 x 2,990 MSR-VTT 3k matrix stays within a few GB).
    out = np.empty(len(gt), dtype=np.int64)
    cols = np.arange(sim.shape[1])
    for s in range(0, len(gt), chunk):
        block, g = sim[s : s + chunk], gt[s : s + chunk]
        target = block[np.arange(len(g)), g][:, None]
        ahead = (block > target) | ((block == target) & (cols[None, :] < g[:, None]))
        out[s : s + chunk] = ahead.sum(axis=1)
    return out


def summarize(r: np.ndarray, ks=KS) -> dict[str, float]:
    """R@K (percent), MdR and MnR (1-based) of 0-based ranks."""
    r = np.asarray(r)
    out = {f"R{k}": 100.0 * float(np.mean(r < k)) for k in ks}
    out["MdR"] = float(np.median(r)) + 1.0
    out["MnR"] = float(np.mean(r)) + 1.0
    return out


def t2v_ranks(sim: np.ndarray, caption_video: np.ndarray) -> np.ndarray:
    """Each caption (row) is a query; ground truth = the column of its video."""
    return ranks(sim, caption_video)


def v2t_ranks(sim: np.ndarray, caption_video: np.ndarray) -> np.ndarray:
    """Video-to-text ranks, X-Pool convention (one caption per video: plain ``sim.T``)."""
    n_videos = sim.shape[1]
    grouped = group_max(sim, caption_video, n_videos)  # (caption groups = videos, videos)
    return ranks(grouped.T, np.arange(n_videos))


def group_max(sim: np.ndarray, caption_video: np.ndarray, n_videos: int) -> np.ndarray:
    """(videos, videos): row i = max over the captions of video i of their similarity rows."""
    caption_video = np.asarray(caption_video, dtype=np.int64)
    out = np.full((n_videos, sim.shape[1]), -np.inf)
    np.maximum.at(out, caption_video, np.asarray(sim, dtype=np.float64))
    missing = np.setdiff1d(np.arange(n_videos), caption_video)
    if missing.size:
        raise ValueError(f"v2t: video column(s) {missing[:5].tolist()} have no caption")
    return out


def pad_by_video(sim: np.ndarray, caption_video: np.ndarray) -> np.ndarray:
    """X-Pool's ``(videos, max_caps, videos)`` tensor: captions grouped by video, -inf padded."""
    caption_video = np.asarray(caption_video, dtype=np.int64)
    n_videos = sim.shape[1]
    counts = np.bincount(caption_video, minlength=n_videos)
    out = np.full((n_videos, int(counts.max()), n_videos), -np.inf)
    slot = np.zeros(n_videos, dtype=np.int64)
    for row, v in enumerate(caption_video):
        out[v, slot[v]] = sim[row]
        slot[v] += 1
    return out


def t2v_ranks_padded(padded: np.ndarray) -> np.ndarray:
    """t2v ranks from the padded tensor, padded slots dropped (X-Pool ``t2v_metrics``)."""
    n_videos, max_caps, _ = padded.shape
    rows, gts = [], []
    for v in range(n_videos):
        for c in range(max_caps):
            if np.isneginf(padded[v, c]).all():
                continue
            rows.append(padded[v, c])
            gts.append(v)
    return ranks(np.stack(rows), np.array(gts))


def v2t_ranks_padded(padded: np.ndarray) -> np.ndarray:
    """v2t ranks from the padded tensor (X-Pool ``v2t_metrics``: max over captions, transpose)."""
    grouped = padded.max(axis=1)
    return ranks(grouped.T, np.arange(padded.shape[0]))


def dsl(sim: np.ndarray, temp: float = 100.0) -> np.ndarray:
    """Dual-softmax re-ranking S * softmax(temp * S, over queries) (off by default)."""
    s = np.asarray(sim, dtype=np.float64)
    z = temp * s
    z = np.exp(z - z.max(axis=0, keepdims=True))
    return s * z / z.sum(axis=0, keepdims=True)
