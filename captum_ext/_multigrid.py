"""Multigrid-preconditioned conjugate gradient for ROAD's neighbour-average system, all planes of a batch at once,
and a sparse direct solve of the same system plane by plane (``solve_neighbour_average_direct``, the reference).

Every removed pixel ``i`` of an (image, channel) plane satisfies ``d_i x_i - sum_j w_j x_j = 0`` over its in-image
neighbours ``j`` (weight 1/6 for the 4 direct, 1/12 for the 4 diagonal ones, ``d_i = sum_j w_j``); kept pixels are
fixed and move to the right-hand side. The matrix is symmetric positive definite on the removed pixels of any plane
that keeps at least one pixel, so conjugate gradient applies; plain (Jacobi-preconditioned) CG needs ~100
iterations on large holes, because each iteration moves information one pixel. The preconditioner here is one
V-cycle of aggregation multigrid: 2x2 blocks of pixels become one coarse unknown, the coarse operator is the
Galerkin product ``P' A P`` (again a 9-point stencil, now with per-pixel coefficients), one damped-Jacobi sweep
before and after the coarse correction, and a dense pseudo-inverse at the coarsest (<= 4x4) level, all in
float32 on per-plane scaled residuals. That keeps the iterations at 6-18 from scattered pixels to 90% holes at
224 px, where Jacobi-preconditioned CG needs 19-525 (``benchmarks/faithfulness.py``, ``docs/faithfulness.md``).

Example::

    >>> import torch
    >>> x = torch.arange(144.0).reshape(1, 1, 12, 12)  # a linear ramp: neighbour averages reproduce it exactly
    >>> mask = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    >>> mask[0, 0, 3:9, 2:10] = True
    >>> solution, iterations = solve_neighbour_average(x, mask, tol=1e-10, max_iter=50)
    >>> torch.allclose(solution[mask], x[mask].double()), iterations < 20
    (True, True)
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch.nn import functional as F

__all__ = ["solve_neighbour_average", "solve_neighbour_average_direct"]

_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
_WEIGHTS = {(dy, dx): 1 / 6 if dy == 0 or dx == 0 else 1 / 12 for dy, dx in _OFFSETS}
# Damped Jacobi: every level's matrix is diagonally dominant with a positive diagonal (Galerkin aggregation keeps
# that), so the eigenvalues of D^-1 A lie in [0, 2] and a damping below 1 keeps the smoother convergent and the
# V-cycle positive definite; 0.9 needed the fewest iterations in a scan of 0.6-0.9 (benchmarks/faithfulness.py).
_JACOBI_DAMPING = 0.9
_COARSE_SCALE = 1.5  # over-correction of piecewise-constant aggregation (Braess 1995; Notay's AGMG uses ~2)
_COARSEST = 4


def _slices(offset: int, size: int) -> tuple[slice, slice]:
    """(target, source) slices so that ``target[i] = source[i + offset]`` over the indices where both exist."""
    return (
        (slice(0, size - offset), slice(offset, size))
        if offset >= 0
        else (slice(-offset, size), slice(0, size + offset))
    )


def _neighbour_sum(z: torch.Tensor) -> torch.Tensor:
    """Weighted sum of each pixel's 8 neighbours in (..., H, W), zero outside the image. The stencil is
    ``([1, 2, 1] x [1, 2, 1] - 4 delta) / 12``, computed as a separable pass of shifted slices."""
    rows = z * 2.0
    rows[..., 1:, :] += z[..., :-1, :]
    rows[..., :-1, :] += z[..., 1:, :]
    total = rows * 2.0
    total[..., 1:] += rows[..., :-1]
    total[..., :-1] += rows[..., 1:]
    return total.sub_(z, alpha=4.0).div_(12.0)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-plane inner products of (N, C, H, W) tensors, (N, C, 1, 1)."""
    return torch.linalg.vecdot(a.flatten(2), b.flatten(2))[..., None, None]


def _apply_stencil(stencil: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``(A z)_i = sum_o stencil[o]_i z_{i+o}`` for an (N, M, 3, 3, H, W) stencil (M = 1 or C) and (N, C, H, W) z."""
    out = stencil[:, :, 1, 1] * z
    h, w = z.shape[-2:]
    for dy, dx in _OFFSETS:
        (ty, sy), (tx, sx) = _slices(dy, h), _slices(dx, w)
        out[..., ty, tx].addcmul_(stencil[:, :, dy + 1, dx + 1, ty, tx], z[..., sy, sx])
    return out


def _fine_stencil(unknown: torch.Tensor, degree: torch.Tensor) -> torch.Tensor:
    """The (N, M, 3, 3, H, W) stencil of the system on the removed pixels of (N, M, H, W) float masks."""
    n, m, h, w = unknown.shape
    stencil = unknown.new_zeros(n, m, 3, 3, h, w)
    stencil[:, :, 1, 1] = degree * unknown
    for dy, dx in _OFFSETS:
        (ty, sy), (tx, sx) = _slices(dy, h), _slices(dx, w)
        stencil[:, :, dy + 1, dx + 1, ty, tx] = -_WEIGHTS[dy, dx] * unknown[..., ty, tx] * unknown[..., sy, sx]
    return stencil


def _coarsen(stencil: torch.Tensor) -> torch.Tensor:
    """Galerkin coarse stencil ``P' A P`` for piecewise-constant interpolation from 2x2 blocks: fine pixel
    ``2I + p`` and its neighbour ``2I + p + o`` belong to blocks ``I`` and ``I + floor((p + o) / 2)``."""
    h, w = stencil.shape[-2:]
    stencil = F.pad(stencil, (0, w % 2, 0, h % 2))
    coarse = stencil.new_zeros(*stencil.shape[:-2], stencil.shape[-2] // 2, stencil.shape[-1] // 2)
    for py in (0, 1):
        for px in (0, 1):
            part = stencil[..., py::2, px::2]
            for oy in (-1, 0, 1):
                for ox in (-1, 0, 1):
                    coarse[:, :, (py + oy) // 2 + 1, (px + ox) // 2 + 1] += part[:, :, oy + 1, ox + 1]
    return coarse


def _restrict(r: torch.Tensor) -> torch.Tensor:
    h, w = r.shape[-2:]
    r = F.pad(r, (0, w % 2, 0, h % 2))
    return r[..., 0::2, 0::2] + r[..., 1::2, 0::2] + r[..., 0::2, 1::2] + r[..., 1::2, 1::2]


def _prolong(e: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return e.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., : size[0], : size[1]]


def _apply_fine(unknown: torch.Tensor, degree: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The system's matrix times ``z`` on the fine grid (removed pixels only)."""
    return (degree * z).sub_(_neighbour_sum(z)).mul_(unknown)


class _VCycle:
    """One symmetric V-cycle (one Jacobi sweep before and after each coarse correction): an SPD preconditioner.
    It runs in float32: a preconditioner only has to be roughly right, and half the bytes make it ~1.4x faster
    (the outer conjugate gradient stays in float64)."""

    def __init__(self, unknown: torch.Tensor, degree: torch.Tensor):
        self.unknown, self.degree = unknown.float(), degree.float()
        self.inverse_diagonal = [self.unknown / self.degree]
        self.stencils: list[torch.Tensor] = []
        stencil = _fine_stencil(self.unknown, self.degree)
        while max(stencil.shape[-2:]) > _COARSEST:
            stencil = _coarsen(stencil)
            diagonal = stencil[:, :, 1, 1]
            self.stencils.append(stencil)
            self.inverse_diagonal.append(
                torch.where(diagonal > 0, 1.0 / diagonal.clamp(min=1e-30), torch.zeros_like(diagonal))
            )
        n, m, _, _, h, w = stencil.shape
        basis = torch.eye(h * w, dtype=stencil.dtype, device=stencil.device).reshape(1, h * w, h, w)
        # column k of the dense coarsest matrix is A e_k; a plane that removed everything gives a singular matrix
        columns = torch.stack(
            [_apply_stencil(stencil[:, j : j + 1], basis.expand(n, -1, -1, -1).clone()) for j in range(m)], 1
        )
        self.coarsest_inverse = torch.linalg.pinv(
            columns.reshape(n, m, h * w, h * w).transpose(-1, -2).double(), hermitian=True
        ).float()

    def _apply(self, level: int, z: torch.Tensor) -> torch.Tensor:
        return _apply_fine(self.unknown, self.degree, z) if level == 0 else _apply_stencil(self.stencils[level - 1], z)

    def _cycle(self, r: torch.Tensor, level: int) -> torch.Tensor:
        if level == len(self.stencils):
            n, c, h, w = r.shape
            return (self.coarsest_inverse @ r.reshape(n, c, h * w, 1)).reshape(n, c, h, w)
        inverse_diagonal = self.inverse_diagonal[level]
        z = r * inverse_diagonal * _JACOBI_DAMPING
        coarse = self._cycle(_restrict(r - self._apply(level, z)), level + 1)
        z += _COARSE_SCALE * _prolong(coarse, r.shape[-2:]) * (inverse_diagonal > 0)
        z.addcmul_(r - self._apply(level, z), inverse_diagonal, value=_JACOBI_DAMPING)
        return z

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        # the cycle is linear: scaling each plane to a unit maximum keeps float32 out of under- and overflow
        scale = r.abs().amax(dim=(-2, -1), keepdim=True).clamp(min=torch.finfo(r.dtype).tiny)
        return self._cycle((r / scale).float(), 0).to(r.dtype) * scale


def solve_neighbour_average(
    inputs: torch.Tensor, mask: torch.Tensor, tol: float, max_iter: int
) -> tuple[torch.Tensor, int]:
    """Solve the system of every (image, channel) plane of (N, C, H, W) ``inputs`` for the ``mask == True`` pixels
    of an (N, C, H, W) bool mask, in float64. Returns the solution (zero where nothing is removed) and the number of
    iterations. Converged when every plane's ``r' M r`` is below ``tol**2 * b' M b`` (M: the V-cycle)."""
    h, w = inputs.shape[-2:]
    if not bool(mask.any()):
        return torch.zeros(inputs.shape, dtype=torch.float64, device=inputs.device), 0
    shared = bool((mask == mask[:, :1]).all())
    unknown = (mask[:, :1] if shared else mask).double()
    x = inputs.detach().double()
    degree = _neighbour_sum(torch.ones(h, w, dtype=torch.float64, device=x.device))
    cycle = _VCycle(unknown, degree)
    r = unknown * _neighbour_sum(x * (1.0 - unknown))
    z = cycle(r)
    rz = _dot(r, z)
    threshold = tol**2 * rz
    tiny = torch.finfo(torch.float64).tiny
    u = torch.zeros_like(r)
    p = z
    iterations = 0
    while iterations < max_iter and bool((rz > threshold).any()):
        ap = _apply_fine(unknown, degree, p)
        pap = _dot(p, ap)
        alpha = torch.where(pap > 0, rz / pap.clamp(min=tiny), torch.zeros_like(pap))
        u.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1.0)
        z = cycle(r)
        rz_next = _dot(r, z)
        beta = torch.where(rz > 0, rz_next / rz.clamp(min=tiny), torch.zeros_like(rz))
        p = z.addcmul_(beta, p)
        rz = rz_next
        iterations += 1
    return u * unknown, iterations


def solve_neighbour_average_direct(inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The system :func:`solve_neighbour_average` solves, assembled per image as a sparse matrix over the removed
    pixels and solved by scipy's sparse LU (one factorisation for the channels that share a mask), in float64 on
    the CPU: slow, exact to rounding, the reference the multigrid solver is checked against. Same arguments and
    result (zero where nothing is removed)."""
    x = inputs.detach().double().cpu().numpy()
    removed = mask.detach().cpu().numpy()
    out = np.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(x.shape[0]):
        channels = list(range(x.shape[1]))
        while channels:
            plane = removed[i, channels[0]]
            group = [j for j in channels if np.array_equal(removed[i, j], plane)]
            channels = [j for j in channels if j not in group]
            ys, xs = np.nonzero(plane)
            if len(ys) in (0, h * w):  # nothing removed, or nothing left to interpolate from (the imputer's mean)
                continue
            index = np.full((h, w), -1)
            index[ys, xs] = np.arange(len(ys))
            degree = np.zeros(len(ys))
            rhs = np.zeros((len(ys), len(group)))
            rows, cols, values = [], [], []
            for (dy, dx), weight in _WEIGHTS.items():
                ny, nx = ys + dy, xs + dx
                inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
                degree[inside] += weight
                at, ny, nx = np.nonzero(inside)[0], ny[inside], nx[inside]
                unknown = plane[ny, nx]
                rows.append(at[unknown])
                cols.append(index[ny[unknown], nx[unknown]])
                values.append(np.full(int(unknown.sum()), -weight))
                np.add.at(rhs, at[~unknown], weight * x[i, group][:, ny[~unknown], nx[~unknown]].T)
            diagonal = np.arange(len(ys))
            matrix = sp.csc_matrix(
                (
                    np.concatenate([*values, degree]),
                    (np.concatenate([*rows, diagonal]), np.concatenate([*cols, diagonal])),
                ),
                shape=(len(ys), len(ys)),
            )
            solution = spla.spsolve(matrix, rhs).reshape(len(ys), len(group))
            for k, j in enumerate(group):
                out[i, j, ys, xs] = solution[:, k]
    return torch.from_numpy(out).to(inputs.device)
