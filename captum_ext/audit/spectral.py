"""``spray``: Spectral Relevance Analysis — which distinct strategies do a class's heatmaps reveal?

Lapuschkin et al. (2019), "Unmasking Clever Hans predictors and assessing what machines really learn", Nature
Communications 10. Steps: each map's positive part, normalised to sum 1, is average-pooled to ``size``; a
symmetric k-nearest-neighbour graph (binary affinity, Euclidean distance) is built on the pooled maps; the
eigenvalues ``0 = l_1 <= l_2 <= ...`` of its normalised Laplacian ``I - D^-1/2 A D^-1/2`` give the number of
clusters by the largest **eigengap** ``k = argmax_k (l_{k+1} - l_k)`` over ``k <= max_clusters``; the rows of the
first ``k`` eigenvectors, scaled to unit length, are clustered by k-means (Ng, Jordan & Weiss 2001). Per cluster,
the mean full-resolution map shows the strategy (a cluster whose mean sits on a watermark is a Clever Hans
strategy).

For display, a 2-D t-SNE of the pooled maps with a fixed seed. t-SNE preserves neighbourhoods only: distances
between groups, the groups' sizes and their spread in the picture mean little, and another seed gives another
picture. Read the clusters from ``labels`` and ``cluster_maps``, not from the scatter.

Example::

    >>> import torch
    >>> maps = torch.zeros(20, 16, 16)
    >>> maps[:10, :4, :4] = 1.0; maps[10:, 10:, 10:] = 1.0        # two strategies
    >>> maps += 0.01 * torch.rand(20, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> result = spray(maps, n_neighbors=5)
    >>> result.n_clusters, sorted(result.cluster_sizes)
    (2, [10, 10])
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.manifold import TSNE
from torch.nn import functional as F

from captum_ext._checks import check_int, check_seed
from captum_ext._results import JSONResult
from captum_ext.maps import normalize_sum
from captum_ext.metrics.localisation import positive_map

__all__ = ["spray", "SprayResult"]


@dataclass
class SprayResult(JSONResult):
    """Clusters of heatmaps found by SpRAy.

    Attributes:
        labels: (N,) long cluster index of each map.
        n_clusters: number of clusters (from the eigengap unless given).
        eigenvalues: (m,) smallest eigenvalues of the normalised graph Laplacian, ascending.
        eigengap: the gap ``l_{k+1} - l_k`` at the chosen ``k`` (NaN when ``n_clusters`` was given and ``k = m``).
        cluster_maps: (k, H, W) mean of the normalised maps of each cluster.
        cluster_sizes: images per cluster.
        embedding: (N, 2) t-SNE coordinates for display, or None (``embed=False`` or fewer than 5 maps).
        n_neighbors: k of the kNN graph. size: pooled map size.
    """

    labels: torch.Tensor
    n_clusters: int
    eigenvalues: torch.Tensor
    eigengap: float
    cluster_maps: torch.Tensor
    cluster_sizes: list[int]
    embedding: torch.Tensor | None
    n_neighbors: int
    size: tuple[int, int]

    def to_dict(self) -> dict:
        """A JSON-able dict (tensors as nested lists; a NaN eigengap as None)."""
        return {
            "labels": self.labels.tolist(),
            "n_clusters": self.n_clusters,
            "eigenvalues": self.eigenvalues.tolist(),
            "eigengap": None if math.isnan(self.eigengap) else self.eigengap,
            "cluster_maps": self.cluster_maps.tolist(),
            "cluster_sizes": list(self.cluster_sizes),
            "embedding": None if self.embedding is None else self.embedding.tolist(),
            "n_neighbors": self.n_neighbors,
            "size": list(self.size),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SprayResult:
        """The result :meth:`to_dict` described."""
        return cls(
            labels=torch.tensor(data["labels"], dtype=torch.long),
            n_clusters=int(data["n_clusters"]),
            eigenvalues=torch.tensor(data["eigenvalues"], dtype=torch.float32),
            eigengap=math.nan if data["eigengap"] is None else float(data["eigengap"]),
            cluster_maps=torch.tensor(data["cluster_maps"], dtype=torch.float32),
            cluster_sizes=[int(n) for n in data["cluster_sizes"]],
            embedding=None if data["embedding"] is None else torch.tensor(data["embedding"], dtype=torch.float32),
            n_neighbors=int(data["n_neighbors"]),
            size=(int(data["size"][0]), int(data["size"][1])),
        )

    def __repr__(self) -> str:
        gaps = ", ".join(f"{v:.3f}" for v in self.eigenvalues.tolist()[:8])
        lines = [
            f"SprayResult({len(self.labels)} maps, {self.n_clusters} clusters, eigengap {self.eigengap:.3f}, "
            f"kNN k={self.n_neighbors}, pooled {self.size[0]}x{self.size[1]})",
            f"  smallest eigenvalues: {gaps}",
        ]
        for i, n in enumerate(self.cluster_sizes):
            lines.append(f"  cluster {i}: {n} maps")
        return "\n".join(lines)

    def plot(self) -> Figure:
        """Eigenvalue spectrum, the per-cluster mean maps and the t-SNE scatter coloured by cluster."""
        k = self.n_clusters
        panels = 2 + k if self.embedding is not None else 1 + k
        fig = Figure(figsize=(2.4 * panels, 2.6))
        axes = fig.subplots(1, panels, squeeze=False)[0]
        values = self.eigenvalues.numpy()
        axes[0].plot(np.arange(1, len(values) + 1), values, "o-", ms=3)
        axes[0].axvline(k + 0.5, color="red", lw=0.8)
        axes[0].set_title(f"eigenvalues (gap at k={k})", fontsize=8)
        for i in range(k):
            ax = axes[1 + i]
            ax.imshow(self.cluster_maps[i].numpy(), cmap="inferno")
            ax.set_title(f"cluster {i} (n={self.cluster_sizes[i]})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        if self.embedding is not None:
            ax = axes[-1]
            points = self.embedding.numpy()
            ax.scatter(points[:, 0], points[:, 1], c=self.labels.numpy(), cmap="tab10", s=8, vmin=0, vmax=9)
            ax.set_title("t-SNE (display only)", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("SpRAy", fontsize=9)
        return fig


def spray(
    maps: torch.Tensor,
    n_clusters: int | None = None,
    size: tuple[int, int] = (8, 8),
    n_neighbors: int | None = None,
    max_clusters: int = 8,
    embed: bool = True,
    seed: int = 0,
) -> SprayResult:
    """Cluster a class's heatmaps into strategies (Lapuschkin et al. 2019, SpRAy).

    Args:
        maps: (N, H, W) or (N, C, H, W) attributions of one class; only the positive part is used.
        n_clusters: number of clusters, or None to choose it by the largest eigengap. Default None.
        size: (h, w) the maps are average-pooled to before comparing them. Default (8, 8).
        n_neighbors: k of the kNN graph. Default ``min(10, N - 1)``.
        max_clusters: largest cluster count the eigengap may choose. Default 8.
        embed: compute the 2-D t-SNE for display. Default True.
        seed: seeds k-means and t-SNE. Default 0.

    Returns:
        :class:`SprayResult`.

    Raises:
        ValueError: fewer than 3 maps, a bad ``size``, ``n_neighbors`` not in [1, N - 1], ``n_clusters`` not in
            [1, N], ``max_clusters`` < 1.
    """
    seed = check_seed(seed)
    positive = positive_map(maps).detach().cpu().double()
    n = positive.shape[0]
    if n < 3:
        raise ValueError(f"Expected argument `maps` to hold at least 3 maps, but got {n}.")
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, numbers.Integral) and s >= 1 for s in size)
        or size[0] > positive.shape[1]
        or size[1] > positive.shape[2]
    ):
        raise ValueError(
            f"Expected argument `size` to be an (h, w) pair of positive ints no larger than the maps "
            f"{tuple(positive.shape[1:])}, but got {size!r}."
        )
    k_nn = min(10, n - 1) if n_neighbors is None else n_neighbors
    if isinstance(k_nn, bool) or not isinstance(k_nn, numbers.Integral) or not 1 <= k_nn <= n - 1:
        raise ValueError(
            f"Expected argument `n_neighbors` to be an int in [1, {n - 1}] or None, but got {n_neighbors!r}."
        )
    max_clusters = min(check_int("max_clusters", max_clusters, 1), n - 1)
    if n_clusters is not None and (
        isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral) or not 1 <= n_clusters <= n
    ):
        raise ValueError(f"Expected argument `n_clusters` to be an int in [1, {n}] or None, but got {n_clusters!r}.")

    normalised = normalize_sum(positive)
    pooled = F.adaptive_avg_pool2d(normalised[:, None], tuple(int(s) for s in size)).flatten(1)
    features = pooled.numpy()

    distances = torch.cdist(pooled, pooled)
    distances.fill_diagonal_(float("inf"))
    neighbours = distances.topk(k_nn, dim=1, largest=False).indices
    affinity = torch.zeros(n, n, dtype=torch.float64)
    affinity.scatter_(1, neighbours, 1.0)
    affinity = torch.maximum(affinity, affinity.T)
    inv_sqrt = affinity.sum(1).rsqrt()
    laplacian = torch.eye(n, dtype=torch.float64) - inv_sqrt[:, None] * affinity * inv_sqrt[None, :]
    eigenvalues, eigenvectors = torch.linalg.eigh(laplacian)
    m = max_clusters + 1
    gaps = eigenvalues[1:m] - eigenvalues[: m - 1]
    k = int(gaps.argmax()) + 1 if n_clusters is None else int(n_clusters)
    eigengap = float(gaps[k - 1]) if k - 1 < len(gaps) else float("nan")

    if k == 1:
        labels = np.zeros(n, dtype=np.int64)
    else:
        vectors = eigenvectors[:, :k].numpy()
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(vectors).astype(np.int64)
    labels_t = torch.from_numpy(labels)
    cluster_maps = torch.stack([normalised[labels_t == i].mean(0) for i in range(k)]).float()
    sizes = [int((labels_t == i).sum()) for i in range(k)]

    embedding = None
    if embed and n >= 5:
        perplexity = float(min(30.0, (n - 1) / 3.0))
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
        embedding = torch.from_numpy(np.asarray(coords, dtype=np.float32))
    return SprayResult(
        labels=labels_t,
        n_clusters=k,
        eigenvalues=eigenvalues[:m].float(),
        eigengap=eigengap,
        cluster_maps=cluster_maps,
        cluster_sizes=sizes,
        embedding=embedding,
        n_neighbors=int(k_nn),
        size=(int(size[0]), int(size[1])),
    )
