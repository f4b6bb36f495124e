"""How similar are two saliency maps? Spearman rank correlation (of |map| and signed), SSIM and HOG similarity.

The four measures of Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018), batched in torch: every
function takes two (N, H, W) batches and returns (N,) float64 values, one per pair of maps, with no Python
loop over images.

- ``"spearman_abs"``: Spearman rank correlation of |map| (ties get their average rank, as in
  ``scipy.stats.spearmanr``).
- ``"spearman"``: Spearman rank correlation of the signed maps.
- ``"ssim"``: structural similarity (Wang et al. 2004) of |map| scaled to [0, 1] per map, with scikit-image's
  defaults: a 7 x 7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03, data range 1, averaged over the
  windows that lie fully inside the map.
- ``"hog"``: Pearson correlation of the histograms of oriented gradients (Dalal & Triggs 2005) of |map| scaled
  to [0, 1] per map, with scikit-image's ``hog`` defaults: 9 unsigned orientations, 8 x 8-pixel cells,
  3 x 3-cell blocks, L2-Hys block normalisation. Maps must be at least 24 x 24.

Constant maps never give NaN. A correlation with a constant side is defined as 1 when both sides are constant
(neither orders anything, so they agree) and 0 when only one is (no association); SSIM needs no convention
(its constants keep the ratio defined) and a constant map scales to all zeros. So a Grad-CAM map that becomes
all zero after randomisation counts as "changed" (0), and two all-zero maps as "the same" (1).

Example::

    >>> import torch
    >>> from captum_ext.metrics import MapSimilarity
    >>> a = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> metric = MapSimilarity()
    >>> metric.update(a, 2 * a)
    >>> {k: round(float(v), 4) for k, v in metric.compute().items()}
    {'spearman_abs': 1.0, 'spearman': 1.0, 'ssim': 1.0, 'hog': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, cast

import torch
from torch.nn import functional as F
from torchmetrics import Metric

from captum_ext.maps import normalize_minmax

if TYPE_CHECKING:
    from captum_ext.explainer import Explainer, Target
    from captum_ext.model_output import OutputFn

__all__ = [
    "occlusion_rank_correlation",
    "SimilarityName",
    "SIMILARITIES",
    "MapSimilarity",
    "map_similarity",
    "spearman_similarity",
    "ssim_similarity",
    "hog_similarity",
    "hog_features",
    "check_similarities",
    "average_ranks",
    "pearson_rows",
]

SimilarityName = Literal["spearman_abs", "spearman", "ssim", "hog"]
SIMILARITIES: tuple[SimilarityName, ...] = ("spearman_abs", "spearman", "ssim", "hog")


def _check_pair(maps_a: torch.Tensor, maps_b: torch.Tensor) -> None:
    for name, maps in (("maps_a", maps_a), ("maps_b", maps_b)):
        if not isinstance(maps, torch.Tensor) or maps.dim() not in (3, 4):
            got = f"shape {tuple(maps.shape)}" if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise ValueError(f"Expected argument `{name}` to be a (N, H, W) or (N, C, H, W) tensor, but got {got}.")
        if not torch.isfinite(maps).all():
            raise ValueError(f"Expected argument `{name}` to hold finite values, but got NaN or inf.")
    if maps_a.shape != maps_b.shape:
        raise ValueError(
            f"Expected `maps_a` and `maps_b` to have the same shape, but got {tuple(maps_a.shape)} and {tuple(maps_b.shape)}."
        )


def check_similarities(similarity: Sequence[str] | str, name: str = "metrics") -> tuple[SimilarityName, ...]:
    """Validate a sequence of similarity names (a single name is accepted) and return it as a tuple."""
    names = (similarity,) if isinstance(similarity, str) else tuple(similarity)
    bad = [m for m in names if m not in SIMILARITIES]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(
            f"Expected argument `{name}` to be a non-empty sequence of distinct names from "
            f"{', '.join(map(repr, SIMILARITIES))}, but got {similarity!r}."
        )
    return cast("tuple[SimilarityName, ...]", names)  # each one of SIMILARITIES


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..P along dim 1 of a (N, P) tensor, ties sharing their average rank (float64), as scipy's ``rankdata``.

    Example::

        >>> average_ranks(torch.tensor([[3.0, 1.0, 3.0]]))
        tensor([[2.5000, 1.0000, 2.5000]], dtype=torch.float64)
    """
    n, p = x.shape
    values, order = torch.sort(x, dim=1, stable=True)
    pos = torch.arange(p, device=x.device, dtype=torch.float64).expand(n, p)
    starts = torch.ones(n, p, dtype=torch.bool, device=x.device)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    if bool(starts.all()):  # no ties: the rank is the sorted position
        return torch.empty_like(pos).scatter_(1, order, pos + 1)
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
    last = torch.where(ends, pos, torch.full_like(pos, p)).flip(1).cummin(dim=1).values.flip(1)
    sorted_ranks = (first + last) / 2 + 1
    return torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of (N, P) tensors in float64; 1 if both rows are constant, 0 if one is.

    Example::

        >>> pearson_rows(torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]), torch.tensor([[2.0, 4.0, 7.0], [0.0, 1.0, 2.0]]))
        tensor([0.9934, 0.0000], dtype=torch.float64)
    """
    a, b = a.double(), b.double()
    const_a = a.amax(1) == a.amin(1)
    const_b = b.amax(1) == b.amin(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    denom = ((a * a).sum(1) * (b * b).sum(1)).sqrt()
    r = ((a * b).sum(1) / denom.clamp(min=torch.finfo(torch.float64).tiny)).clamp(-1.0, 1.0)
    r = torch.where(const_a | const_b, torch.zeros_like(r), r)
    return torch.where(const_a & const_b, torch.ones_like(r), r)


def _unit_abs(maps: torch.Tensor) -> torch.Tensor:
    """|map| scaled to [0, 1] per map (float64); a constant map becomes all zeros."""
    return normalize_minmax(maps.abs().double())


def spearman_similarity(maps_a: torch.Tensor, maps_b: torch.Tensor, absolute: bool = True) -> torch.Tensor:
    """Spearman rank correlation between paired maps (Adebayo et al. 2018's main similarity).

    Args:
        maps_a, maps_b: (N, H, W) maps (any real dtype; ranked in their own dtype, correlated in float64).
        absolute: rank |map| (True, default) or the signed map (False).

    Returns:
        (N,) float64 in [-1, 1]: 1 if both maps of a pair are constant, 0 if only one is.

    Raises:
        ValueError: shapes differ, are not (N, H, W), or values are not finite.

    Example::

        >>> import torch
        >>> a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
        >>> spearman_similarity(a, -a, absolute=False)
        tensor([-1.], dtype=torch.float64)
    """
    _check_pair(maps_a, maps_b)
    a, b = maps_a.reshape(maps_a.shape[0], -1), maps_b.reshape(maps_b.shape[0], -1)
    if absolute:
        a, b = a.abs(), b.abs()
    return pearson_rows(average_ranks(a), average_ranks(b))


def ssim_similarity(maps_a: torch.Tensor, maps_b: torch.Tensor, win_size: int = 7) -> torch.Tensor:
    """Mean structural similarity (SSIM, Wang et al. 2004) of |map| scaled to [0, 1], per pair of maps.

    Matches ``skimage.metrics.structural_similarity(a, b, data_range=1, win_size=win_size)`` on the scaled maps
    (uniform window, sample covariance, K1 = 0.01, K2 = 0.03, mean over windows fully inside the map).

    Args:
        maps_a, maps_b: (N, H, W) maps with H, W >= ``win_size``.
        win_size: odd side of the square window. Default 7.

    Returns:
        (N,) float64 in [-1, 1]; 1 for two constant maps.

    Raises:
        ValueError: bad shapes, non-finite values, or a window that is even or larger than the map.

    Example::

        >>> import torch
        >>> a = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> ssim_similarity(a, a)
        tensor([1., 1.], dtype=torch.float64)
    """
    _check_pair(maps_a, maps_b)
    if not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0 or win_size > min(maps_a.shape[1:]):
        raise ValueError(
            f"Expected argument `win_size` to be an odd int >= 3 and <= the map side {min(maps_a.shape[1:])}, "
            f"but got {win_size!r}."
        )
    x, y = _unit_abs(maps_a)[:, None], _unit_abs(maps_b)[:, None]
    mean = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731 - the window average, valid region only
    ux, uy = mean(x), mean(y)
    cov_norm = win_size**2 / (win_size**2 - 1)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def hog_features(maps: torch.Tensor, orientations: int = 9, cell: int = 8, block: int = 3) -> torch.Tensor:
    """Histograms of oriented gradients (Dalal & Triggs 2005) of each (H, W) map, batched.

    Matches ``skimage.feature.hog(map, orientations, (cell, cell), (block, block), "L2-Hys")`` element for
    element, in the same order: central differences (zero at the border), unsigned orientations in
    [0, 180) with hard binning, cell means, blocks of ``block`` x ``block`` cells L2-Hys normalised
    (clip at 0.2, eps 1e-5). The maps are used as given (no scaling).

    Args:
        maps: (N, H, W) real tensor with H, W >= ``cell * block``.
        orientations: number of orientation bins. Default 9.
        cell: cell side in pixels. Default 8.
        block: block side in cells. Default 3.

    Returns:
        (N, F) float64 with F = blocks_rows * blocks_cols * block * block * orientations.

    Raises:
        ValueError: ``maps`` not (N, H, W), or too small for one block.

    Example::

        >>> import torch
        >>> hog_features(torch.zeros(2, 32, 32)).shape
        torch.Size([2, 324])
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        got = f"shape {tuple(maps.shape)}" if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"Expected argument `maps` to be a (N, H, W) tensor, but got {got}.")
    n, h, w = maps.shape
    rows, cols = h // cell, w // cell
    if rows < block or cols < block:
        raise ValueError(
            f"Expected maps of at least {cell * block} x {cell * block} pixels for HOG ({block} x {block} cells of "
            f"{cell} pixels), but got {h} x {w}."
        )
    x = maps.double()
    g_row = torch.zeros_like(x)
    g_col = torch.zeros_like(x)
    g_row[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    g_col[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    magnitude = torch.hypot(g_col, g_row)[:, : rows * cell, : cols * cell]
    angle = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)[:, : rows * cell, : cols * cell]
    # An angle that rounds to exactly 180 lies in no bin (as in scikit-image): it goes to a dropped extra bin.
    bins = torch.floor(angle / (180.0 / orientations)).long().clamp(0, orientations)
    hist = torch.zeros(n, orientations + 1, rows * cell, cols * cell, dtype=torch.float64, device=maps.device)
    hist.scatter_(1, bins[:, None], magnitude[:, None])
    cells = F.avg_pool2d(hist[:, :orientations], cell)  # (N, O, rows, cols): magnitude sum / cell area
    blocks = cells.unfold(2, block, 1).unfold(3, block, 1)  # (N, O, brows, bcols, block, block)
    blocks = blocks.permute(0, 2, 3, 4, 5, 1).reshape(n, rows - block + 1, cols - block + 1, -1)
    eps = 1e-5
    blocks = blocks / (blocks.square().sum(-1, keepdim=True) + eps**2).sqrt()
    blocks = blocks.clamp(max=0.2)
    blocks = blocks / (blocks.square().sum(-1, keepdim=True) + eps**2).sqrt()
    return blocks.reshape(n, -1)


def hog_similarity(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the HOG features of |map| scaled to [0, 1], per pair of maps.

    Args:
        maps_a, maps_b: (N, H, W) maps, H and W >= 24 (see :func:`hog_features`).

    Returns:
        (N,) float64 in [-1, 1]; 1 if both feature vectors are constant (e.g. two constant maps), 0 if one is.

    Raises:
        ValueError: bad shapes, non-finite values, or maps smaller than 24 x 24.

    Example::

        >>> import torch
        >>> a = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> hog_similarity(a, 3 * a).round(decimals=6)
        tensor([1., 1.], dtype=torch.float64)
    """
    _check_pair(maps_a, maps_b)
    return pearson_rows(hog_features(_unit_abs(maps_a)), hog_features(_unit_abs(maps_b)))


def map_similarity(
    maps_a: torch.Tensor, maps_b: torch.Tensor, metrics: Sequence[SimilarityName] = SIMILARITIES
) -> dict[str, torch.Tensor]:
    """Each requested similarity between paired maps: ``{name: (N,) float64}``, in the order asked.

    Args:
        maps_a, maps_b: (N, H, W) maps, or (N, C, H, W) attributions: then ``"spearman"`` compares the channel
            sums and the other measures the sums of |a| over channels (the sanity checks' reductions).
        metrics: names from ``"spearman_abs"``, ``"spearman"``, ``"ssim"``, ``"hog"``. Default all four.

    Returns:
        dict name -> (N,) float64 tensor.

    Raises:
        ValueError: an unknown name, bad shapes or non-finite values.

    Example::

        >>> import torch
        >>> a = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> map_similarity(a, a, ("spearman_abs",))["spearman_abs"]
        tensor([1., 1., 1.], dtype=torch.float64)
    """
    names = check_similarities(metrics)
    _check_pair(maps_a, maps_b)
    signed_a, signed_b = (maps_a.sum(1), maps_b.sum(1)) if maps_a.dim() == 4 else (maps_a, maps_b)
    abs_a, abs_b = (maps_a.abs().sum(1), maps_b.abs().sum(1)) if maps_a.dim() == 4 else (maps_a, maps_b)
    functions = {
        "spearman_abs": lambda: spearman_similarity(abs_a, abs_b, absolute=True),
        "spearman": lambda: spearman_similarity(signed_a, signed_b, absolute=False),
        "ssim": lambda: ssim_similarity(abs_a, abs_b),
        "hog": lambda: hog_similarity(abs_a, abs_b),
    }
    return {name: functions[name]() for name in names}


class MapSimilarity(Metric):
    """Mean similarity between paired saliency maps over every pair seen (Adebayo et al. 2018).

    States are per-metric sums and a pair count (``dist_reduce_fx="sum"``), so the metric syncs under DDP.
    See the module docstring for each measure and the constant-map convention.

    Args:
        metrics: names from ``"spearman_abs"``, ``"spearman"``, ``"ssim"``, ``"hog"``. Default all four.
        **kwargs: passed to ``torchmetrics.Metric``.

    Raises:
        ValueError: an unknown or repeated name.

    Example::

        >>> import torch
        >>> a = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> metric = MapSimilarity(metrics=("spearman", "ssim"))
        >>> metric.update(a, a)
        >>> metric.compute()["spearman"]
        tensor(1., dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    count: torch.Tensor  # a state added by add_state (as is each sum_<name>)

    def __init__(self, metrics: Sequence[SimilarityName] = SIMILARITIES, **kwargs):
        super().__init__(**kwargs)
        self.metrics = check_similarities(metrics)
        for name in self.metrics:
            self.add_state(f"sum_{name}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, maps_a: torch.Tensor, maps_b: torch.Tensor) -> None:
        """Add the similarities of the N pairs ``(maps_a[i], maps_b[i])``, both (N, H, W) or (N, C, H, W)
        (see :func:`map_similarity` for how attributions are reduced)."""
        values = map_similarity(maps_a, maps_b, self.metrics)
        for name, value in values.items():
            state = getattr(self, f"sum_{name}")
            setattr(self, f"sum_{name}", state + value.sum().to(state))
        self.count += maps_a.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        """``{name: mean similarity}`` (float64 scalars) over every pair seen since the last reset."""
        return {name: getattr(self, f"sum_{name}") / self.count for name in self.metrics}


def occlusion_rank_correlation(
    model: torch.nn.Module,
    explainer: Explainer | str,
    inputs: torch.Tensor,
    target: Target,
    occlusion: Explainer | str = "occlusion",
    output_fn: OutputFn | None = None,
) -> torch.Tensor:
    """(N,) Spearman rank correlation between ``|occlusion|`` and ``|explainer|`` maps (channels summed): how far a
    gradient method agrees with the model's measured response to hiding each region (Selvaraju et al. 2017 report
    0.261 for Guided Grad-CAM against occlusion on PASCAL VOC 2007).

    Args:
        model: the classifier; explainer: an :class:`~captum_ext.Explainer` or a short name.
        inputs: (N, C, H, W); target: the explained classes.
        occlusion: the occlusion recipe (``Explainer("occlusion", sliding_window_shapes=...)``). Default its short name.
    """
    from captum_ext.explainer import as_explainer  # imported late: the explainer imports the maps module

    reference = as_explainer(occlusion, "occlusion").saliency(model, inputs, target, "sum_abs", output_fn=output_fn)
    maps = as_explainer(explainer).saliency(model, inputs, target, "sum_abs", output_fn=output_fn)
    return spearman_similarity(reference, maps, absolute=True).float()
