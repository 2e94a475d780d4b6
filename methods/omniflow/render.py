"""Rendered-image input for a multimodal backend: a 2-D field as a PNG (README "Backends").

Fixed diverging colour map (blue - white - red) on a symmetric range ``[-m, m]`` with
``m = max |field|`` unless given, array convention ``field[i, j]`` at ``(x_i, y_j)`` drawn with x
to the right and y upwards (row 0 of the image is the largest y), each cell ``scale`` x ``scale``
pixels. Plain zlib PNG (RFC 2083), no plotting library.
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np


def colorize(field: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """(H, W, 3) uint8 image of a 2-D field: -vmax blue, 0 white, +vmax red."""
    a = np.asarray(field, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 1:
        raise ValueError(f"render: expected a 2-D field, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("render: the field holds NaN or inf")
    m = float(vmax) if vmax is not None else float(np.abs(a).max())
    t = np.clip(a / m, -1.0, 1.0) if m > 0 else np.zeros_like(a)
    img = np.empty(a.shape + (3,))
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    img[..., 0] = 1.0 - neg  # red channel falls towards blue
    img[..., 1] = 1.0 - np.abs(t)
    img[..., 2] = 1.0 - pos
    img = img.transpose(1, 0, 2)[::-1]  # rows = y (top = largest y), columns = x
    return np.round(img * 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as a PNG (8-bit RGB, filter 0 on every row)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, c = rgb.shape
    if c != 3:
        raise ValueError(f"png: expected 3 channels, got {c}")
    raw = b"".join(b"\x00" + rgb[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def render_png(field: np.ndarray, scale: int = 4, vmax: float | None = None) -> bytes:
    """PNG of a 2-D field, each cell ``scale`` x ``scale`` pixels."""
    img = colorize(field, vmax)
    if scale > 1:
        img = np.kron(img, np.ones((scale, scale, 1), dtype=np.uint8))
    return png_bytes(img)


def data_url(png: bytes) -> str:
    """``data:image/png;base64,...``: how the OpenAI chat format carries an inline image."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
