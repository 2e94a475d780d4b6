"""Neural-surrogate baselines (README "Baselines"): a tiny FNO-2d and a tiny U-Net with circular
padding, the "traditional deep-learning baselines" the abstract compares OMNIFLOW with.

Both map the state (omega, u, v) at t to the state at t + dt_record (3 channels in and out, plus
two grid channels in), trained with the relative L2 loss on the source regime and rolled out
autoregressively. Predicting u and v directly (rather than deriving them from omega) is what lets
the divergence residual of a surrogate be non-zero, as it is for surrogates of velocity data.
Few-shot adaptation = fine-tuning a copy on k target trajectories for a fixed number of steps.

Device and dtype: a :class:`Surrogate` lives on the device and in the dtype it is given (the job's
``--device`` / ``--dtype``); inputs are moved there, outputs come back as float32 numpy arrays.
On CPU in float32 every ``.to`` / ``.float()`` below is a no-op, so tiny runs are unchanged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as Fn


class SpectralConv2d(nn.Module):
    """Fourier layer: keep the lowest ``modes`` x ``modes`` (both signs of kx) and mix channels."""

    def __init__(self, cin: int, cout: int, modes: int):
        super().__init__()
        self.modes = modes
        s = 1.0 / (cin * cout)
        self.w1 = nn.Parameter(s * torch.rand(2, cin, cout, modes, modes))  # real/imag parts
        self.w2 = nn.Parameter(s * torch.rand(2, cin, cout, modes, modes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        m = min(self.modes, h // 2, w // 2 + 1)
        # The FFT and complex weights run in float32 at least: torch has no bfloat16 FFT and no
        # complex bfloat16 / float16 for these shapes (no-ops in float32).
        real = torch.promote_types(x.dtype, torch.float32)
        xh = torch.fft.rfft2(x.to(real))
        out = torch.zeros(b, self.w1.shape[2], h, w // 2 + 1, dtype=xh.dtype, device=x.device)
        w1 = torch.complex(self.w1[0].to(real), self.w1[1].to(real))[..., :m, :m]
        w2 = torch.complex(self.w2[0].to(real), self.w2[1].to(real))[..., :m, :m]
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", xh[:, :, :m, :m], w1)
        out[:, :, -m:, :m] = torch.einsum("bixy,ioxy->boxy", xh[:, :, -m:, :m], w2)
        return torch.fft.irfft2(out, s=(h, w)).to(x.dtype)


class FNO2d(nn.Module):
    def __init__(
        self, cin: int = 5, cout: int = 3, width: int = 16, modes: int = 8, layers: int = 4
    ):
        super().__init__()
        self.lift = nn.Conv2d(cin, width, 1)
        self.spec = nn.ModuleList(SpectralConv2d(width, width, modes) for _ in range(layers))
        self.pw = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
        self.proj = nn.Sequential(
            nn.Conv2d(width, 2 * width, 1), nn.GELU(), nn.Conv2d(2 * width, cout, 1)
        )

    def forward(self, x):
        x = self.lift(x)
        for i, (s, p) in enumerate(zip(self.spec, self.pw, strict=True)):
            x = s(x) + p(x)
            if i < len(self.spec) - 1:
                x = Fn.gelu(x)
        return self.proj(x)


def _block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular"),
        nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, padding_mode="circular"),
        nn.GELU(),
    )


class UNet(nn.Module):
    def __init__(self, cin: int = 5, cout: int = 3, width: int = 16):
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.e1, self.e2, self.e3 = _block(cin, c1), _block(c1, c2), _block(c2, c3)
        self.d2, self.d1 = _block(c3 + c2, c2), _block(c2 + c1, c1)
        self.out = nn.Conv2d(c1, cout, 1)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(Fn.avg_pool2d(a, 2))
        c = self.e3(Fn.avg_pool2d(b, 2))
        b = self.d2(torch.cat([Fn.interpolate(c, scale_factor=2.0, mode="nearest"), b], 1))
        a = self.d1(torch.cat([Fn.interpolate(b, scale_factor=2.0, mode="nearest"), a], 1))
        return self.out(a)


ARCHS = {"fno": FNO2d, "unet": UNet}


def build(arch: str, spec: dict) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown baseline architecture {arch!r}; known: {', '.join(ARCHS)}")
    return ARCHS[arch](**spec)


# ------------------------------------------------------------------ data


def load_states(path: str | Path) -> np.ndarray:
    """(n, T, 3, N, N) float32 states (omega, u, v) from a train/test npz of benchmarks/pde."""
    z = np.load(path)
    return np.stack([z["omega"], z["u"], z["v"]], axis=2).astype(np.float32)


def pairs(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = states[:, :-1].reshape(-1, *states.shape[2:])
    y = states[:, 1:].reshape(-1, *states.shape[2:])
    return x, y


def _with_grid(x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    # The grid is built in float32 on the CPU (as always) and then moved, so its values do not
    # depend on the device; no-op at float32 on CPU.
    gx = torch.linspace(0, 1, h + 1)[:h].to(x.device, x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    gy = torch.linspace(0, 1, w + 1)[:w].to(x.device, x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([x, gx, gy], 1)


class Surrogate:
    """Model + per-channel normalisation, one-step and autoregressive prediction."""

    def __init__(
        self,
        arch: str,
        spec: dict,
        scale: list[float],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.arch, self.spec, self.scale = arch, dict(spec), list(scale)
        self.device, self.dtype = torch.device(device), dtype
        # initialised on the CPU in float32 (the same draws on every machine), then moved
        self.model = build(arch, spec).to(device=self.device, dtype=dtype)
        self._s = torch.tensor(self.scale, dtype=torch.float32).view(1, 3, 1, 1)
        self._s = self._s.to(device=self.device, dtype=dtype)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        """A float32 numpy array as a tensor on the surrogate's device and dtype."""
        return torch.from_numpy(np.asarray(a, np.float32)).to(device=self.device, dtype=self.dtype)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        xn = x / self._s
        return (xn + self.model(_with_grid(xn))) * self._s  # residual update

    def train(
        self, states: np.ndarray, steps: int, lr: float, batch: int, seed: int
    ) -> list[float]:
        x, y = pairs(states)
        x, y = self._tensor(x), self._tensor(y)
        # batch indices from a CPU generator: the same sequence on every device
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, steps // 3), gamma=0.5)
        self.model.train()
        losses = []
        for _ in range(steps):
            idx = torch.randint(0, len(x), (min(batch, len(x)),), generator=gen).to(self.device)
            pred = self.step(x[idx])
            # relative L2 loss per sample, reduced in float32 at least (no-op in float32)
            real = torch.promote_types(pred.dtype, torch.float32)
            err = torch.linalg.vector_norm((pred - y[idx]).to(real).flatten(1), dim=1)
            den = torch.linalg.vector_norm(y[idx].to(real).flatten(1), dim=1).clamp_min(1e-8)
            loss = (err / den).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        self.model.eval()
        return losses

    @torch.no_grad()
    def rollout(self, x0: np.ndarray, steps: int) -> np.ndarray:
        """x0: (n, 3, N, N) -> (n, steps, 3, N, N)."""
        x = self._tensor(x0)
        out = []
        for _ in range(steps):
            x = self.step(x)
            out.append(x.to(device="cpu", dtype=torch.float32).numpy())
        return np.stack(out, axis=1)

    def save(self, out: str | Path) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.model.state_dict().items()},
            str(out / "model.safetensors"),
        )
        (out / "config.json").write_text(
            json.dumps({"arch": self.arch, "spec": self.spec, "scale": self.scale}, indent=1)
        )

    @classmethod
    def load(
        cls,
        folder: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Surrogate:
        folder = Path(folder)
        cfg = json.loads((folder / "config.json").read_text())
        s = cls(cfg["arch"], cfg["spec"], cfg["scale"], device=device, dtype=dtype)
        # load_state_dict copies into the model's own device and dtype
        s.model.load_state_dict(load_file(str(folder / "model.safetensors")))
        s.model.eval()
        return s


def channel_scale(states: np.ndarray) -> list[float]:
    return [max(float(states[:, :, c].std()), 1e-6) for c in range(states.shape[2])]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def finite_or_fail(pred: np.ndarray) -> np.ndarray:
    """Per-sample failure flags for non-finite or exploding rollouts (never silently dropped)."""
    flat = pred.reshape(pred.shape[0], -1)
    return ~np.isfinite(flat).all(axis=1) | (
        np.nan_to_num(np.abs(flat), nan=math.inf).max(axis=1) > 1e6
    )
