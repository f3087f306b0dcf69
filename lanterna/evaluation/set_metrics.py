"""Distances between two sets of features: FID, KID, Inception Score, precision and recall.

Pure functions over feature matrices (N x d); all arithmetic is float64. Extracting features
from images, and caching a reference set's statistics, is lanterna/evaluation/extraction.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def as_float64(features: ArrayLike) -> torch.Tensor:
    x = torch.as_tensor(features).detach().cpu().to(torch.float64)
    if x.dim() != 2:
        raise ValueError(f"features must be N x d, got shape {tuple(x.shape)}")
    return x


@dataclass
class FeatureStats:
    """Mean and unbiased covariance (ddof 1) of a feature set: what FID compares.

    For sets no larger than the feature size, `factor` (d x n) holds the centred features over
    sqrt(n - 1), so factor @ factor.T = cov: an exact factor of the singular covariance, which
    spares FID an eigendecomposition. It is never larger than `cov`.
    """

    mean: np.ndarray
    cov: np.ndarray
    count: int
    factor: np.ndarray | None = None

    def is_singular(self) -> bool:
        """A covariance of n features has rank at most n - 1."""
        return self.count - 1 < self.mean.shape[0]

    @classmethod
    def of(cls, features: ArrayLike) -> FeatureStats:
        acc = StatsAccumulator()
        acc.add(features)
        return acc.stats()


class StatsAccumulator:
    """Mean and covariance over batches, merged with Chan et al.'s pairwise update (1979).

    Keeping the scatter about the running mean, not raw sums of x x^T, avoids the cancellation
    that sum-of-squares covariances suffer when features have a large mean. While the set is no
    larger than the feature size, its rows are kept too, for `FeatureStats.factor`.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.scatter: torch.Tensor | None = None
        self.rows: list[torch.Tensor] | None = []

    def add(self, features: ArrayLike) -> None:
        x = as_float64(features)
        n = x.shape[0]
        if n == 0:
            return
        if self.rows is not None:
            self.rows.append(x)
            if self.count + n > x.shape[1]:
                self.rows = None
        mean_b = x.mean(0)
        centred = x - mean_b
        scatter_b = centred.T @ centred
        if self.mean is None:
            self.count, self.mean, self.scatter = n, mean_b, scatter_b
            return
        total = self.count + n
        delta = mean_b - self.mean
        self.scatter = self.scatter + scatter_b + torch.outer(delta, delta) * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total

    def stats(self) -> FeatureStats:
        if self.mean is None or self.count < 2:
            raise ValueError("a covariance needs at least 2 images in the set")
        cov = self.scatter / (self.count - 1)
        cov = (cov + cov.T) / 2
        factor = None
        if self.rows is not None:
            factor = ((torch.cat(self.rows) - self.mean).T / math.sqrt(self.count - 1)).numpy()
        return FeatureStats(self.mean.numpy(), cov.numpy(), self.count, factor)


def psd_factor(matrix: torch.Tensor, singular: bool = False) -> torch.Tensor:
    """A factor F with F F^T = matrix (symmetric positive semi-definite), to round-off.

    Cholesky when it goes through (backward stable, and cheap); for a singular covariance (fewer
    images than features: say so with `singular` to skip the Cholesky attempt), the eigenvectors
    scaled by sqrt(eigenvalue), keeping only the eigenvalues above the numerical-rank threshold
    d * eps * max: the rest are round-off of zeros.
    """
    if not singular:
        factor, info = torch.linalg.cholesky_ex(matrix)
        if int(info) == 0:
            return factor
    eigvals, eigvecs = torch.linalg.eigh(matrix)
    threshold = matrix.shape[0] * torch.finfo(torch.float64).eps * float(eigvals.max().clamp_min(0))
    keep = eigvals > threshold
    return eigvecs[:, keep] * eigvals[keep].sqrt()


def covariance_factor(stats: FeatureStats) -> torch.Tensor:
    if stats.factor is not None:
        return torch.as_tensor(stats.factor, dtype=torch.float64)
    return psd_factor(torch.as_tensor(stats.cov, dtype=torch.float64), stats.is_singular())


def nuclear_norm_of_product(factor2: torch.Tensor, factor1: torch.Tensor) -> float:
    """tr sqrt(cov1 cov2) for factors F F^T = cov, as the nuclear norm of F2^T F1.

    (F2^T F1)^T (F2^T F1) = F1^T cov2 F1 has the eigenvalues of cov2 F1 F1^T = cov2 cov1, so the
    trace of the square root is the sum of F2^T F1's singular values. SVD gets small singular
    values to absolute precision eps * |F2^T F1|, where the eigenvalues of a product would lose
    half their digits under the square root, and no complex round-off of a general `sqrtm` or
    `eigvals` arises. Factors of singular covariances have only as many columns as their rank,
    and the SVD shrinks with them. (torch.linalg throughout: mixing torch's and numpy's BLAS
    thread pools stalls both.)
    """
    product = factor2.T @ factor1
    if product.numel() == 0:
        return 0.0
    return float(torch.linalg.svdvals(product).sum())


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """tr sqrt(cov1 cov2) of two covariance matrices (see `nuclear_norm_of_product`)."""
    f1 = psd_factor(torch.as_tensor(cov1, dtype=torch.float64))
    f2 = psd_factor(torch.as_tensor(cov2, dtype=torch.float64))
    return nuclear_norm_of_product(f2, f1)


class IllConditionedWarning(UserWarning):
    """A set metric was computed from fewer images than it needs to mean much."""


def fid_conditioning_warning(*stats: FeatureStats) -> str | None:
    """What to tell a user whose sets are too small for a full-rank covariance, else None.

    n images give a covariance of rank at most n - 1; below d + 1 of them the matrix square root
    sees a singular matrix and FID moves a lot with the sample.
    """
    d = stats[0].mean.shape[0]
    small = min(s.count for s in stats)
    if small > d:
        return None
    return (f"FID is ill-conditioned here: a set of {small} images gives a covariance of rank at most "
            f"{small - 1}, below the feature size {d}; use at least {d + 1} images per set "
            f"(several times that for a stable value)")


def frechet_distance(stats1: FeatureStats, stats2: FeatureStats) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) (Dowson and Landau 1982; FID, Heusel et al. 2017).

    Round-off can push a distance of zero a hair below it; the result is clamped at 0.
    """
    if stats1.mean.shape != stats2.mean.shape:
        raise ValueError(f"feature sizes differ: {stats1.mean.shape[0]} and {stats2.mean.shape[0]}")
    mean_term = float(np.sum((stats1.mean - stats2.mean) ** 2))
    trace_term = float(np.trace(stats1.cov) + np.trace(stats2.cov))
    cross = nuclear_norm_of_product(covariance_factor(stats2), covariance_factor(stats1))
    return max(mean_term + trace_term - 2 * cross, 0.0)


def poly_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None,
                coef: float = 1.0) -> torch.Tensor:
    """k(x, y) = (gamma x.y + coef)^degree with gamma = 1/d by default (KID, Binkowski et al. 2018)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef) ** degree


def mmd2_unbiased(x: ArrayLike, y: ArrayLike, degree: int = 3, gamma: float | None = None,
                  coef: float = 1.0) -> float:
    """The unbiased estimate of MMD^2 between two samples under the polynomial kernel."""
    x, y = as_float64(x), as_float64(y)
    m, n = x.shape[0], y.shape[0]
    k_xx = poly_kernel(x, x, degree, gamma, coef)
    k_yy = poly_kernel(y, y, degree, gamma, coef)
    k_xy = poly_kernel(x, y, degree, gamma, coef)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.sum() / (m * n))


@dataclass
class MeanStd:
    mean: float
    std: float


def kernel_inception_distance(reference: ArrayLike, generated: ArrayLike, subsets: int = 100,
                              subset_size: int = 1000, degree: int = 3, gamma: float | None = None,
                              coef: float = 1.0, seed: int | None = 0) -> MeanStd:
    """KID: MMD^2 averaged over random subsets, as torchmetrics computes it.

    Each subset draws a permutation of the reference, then one of the generated set, from a torch
    generator seeded with `seed` (None: torch's global generator); the std is the population one.
    """
    ref, gen = as_float64(reference), as_float64(generated)
    if subset_size < 2:
        raise ValueError(f"KID needs subsets of at least 2 images, got subset_size {subset_size}")
    if subset_size > min(len(ref), len(gen)):
        raise ValueError(f"subset_size {subset_size} is larger than a set "
                         f"({len(ref)} reference, {len(gen)} generated images)")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        ref_idx = torch.randperm(len(ref), generator=generator)[:subset_size]
        gen_idx = torch.randperm(len(gen), generator=generator)[:subset_size]
        values.append(mmd2_unbiased(ref[ref_idx], gen[gen_idx], degree, gamma, coef))
    scores = torch.tensor(values, dtype=torch.float64)
    return MeanStd(float(scores.mean()), float(scores.std(unbiased=False)))


def inception_score(logits: ArrayLike, splits: int = 10, seed: int | None = 0) -> MeanStd:
    """exp(E_x KL(p(y|x) || p(y))) per split of a shuffled set (Salimans et al. 2016).

    Shuffled with a torch generator seeded with `seed` (None: the global one, as torchmetrics),
    cut into `splits` chunks like `torch.chunk`; mean and sample std over the splits.
    """
    x = as_float64(logits)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    x = x[torch.randperm(len(x), generator=generator)]
    scores = []
    for chunk in x.chunk(splits, dim=0):
        log_p = chunk.log_softmax(dim=1)
        p = log_p.exp()
        log_marginal = p.mean(0, keepdim=True).log()
        scores.append((p * (log_p - log_marginal)).sum(1).mean().exp())
    values = torch.stack(scores)
    std = float(values.std()) if len(values) > 1 else 0.0
    return MeanStd(float(values.mean()), std)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2 * a @ b.T
    return d2.clamp_min_(0)


def knn_radii(features: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Squared distance from each point to its k-th nearest other point of the same set."""
    if len(features) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images a set")
    radii = []
    for start in range(0, len(features), chunk):
        block = squared_distances(features[start:start + chunk], features)
        rows = torch.arange(block.shape[0])
        block[rows, rows + start] = 0.0  # a point's distance to itself, free of round-off
        radii.append(block.kthvalue(k + 1, dim=1).values)  # +1: the point itself comes first
    return torch.cat(radii)


def fraction_in_manifold(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
                         chunk: int = 1024) -> float:
    """Share of `points` inside at least one ball (centre, k-NN radius) of the other set."""
    inside = 0
    centre_norms = (centres * centres).sum(1)
    for start in range(0, len(points), chunk):
        block = points[start:start + chunk]
        d2 = squared_distances(block, centres)
        # Round-off of |a|^2 + |b|^2 - 2 a.b is a few eps of the norms: allow for it.
        slack = 8 * torch.finfo(torch.float64).eps * ((block * block).sum(1, keepdim=True) + centre_norms)
        inside += int((d2 <= radii + slack).any(dim=1).sum())
    return inside / len(points)


@dataclass
class PrecisionRecall:
    precision: float
    recall: float


def precision_recall(reference: ArrayLike, generated: ArrayLike, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

    Precision: share of generated images inside the reference manifold (the union of balls around
    each reference feature reaching its k-th nearest reference neighbour); recall: share of
    reference images inside the generated manifold.
    """
    ref, gen = as_float64(reference), as_float64(generated)
    precision = fraction_in_manifold(gen, ref, knn_radii(ref, k))
    recall = fraction_in_manifold(ref, gen, knn_radii(gen, k))
    return PrecisionRecall(precision, recall)
