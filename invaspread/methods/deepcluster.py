"""DeepCluster (Caron, Bojanowski, Joulin, Douze, ECCV 2018; reference facebookresearch/deepcluster).

Every ``reassign`` epochs (the reference: every epoch):

1. embed the un-augmented training set in eval mode (the reference's ``compute_features``);
2. PCA-whiten to at most ``pca_dims`` dimensions and L2-normalise the rows (``preprocess_features``);
3. k-means with k clusters: the shared ``ops.kmeans`` with faiss's empty-cluster split and 20 iterations
   (``run_kmeans``); the pseudo-labels are a buffer, so a resumed run keeps them;
4. re-initialise the classifier (weights N(0, 0.01), bias 0) and forget its optimizer state.

Every epoch draws ``N`` images uniformly over the non-empty clusters (``UnifLabelSampler``: N / (non-empty
clusters) + 1 per cluster, without replacement when the cluster is larger, shuffled, cut to N) and trains
one augmented view of each with cross-entropy toward its pseudo-label (``PseudoLabelLoss``).

Which layer is clustered, and why: the 128-d embedding layer before its L2 normalisation. It is the
classifier's input, as in the reference, which clusters the layer its classifier reads (fc7, not
normalised either), and its normalised form is the embedding every method of the paper is scored on with
kNN. A classifier over the *normalised* embedding does not learn at the paper's lr: with unit-norm inputs
and weights starting at N(0, 0.01) its logits stay near zero for hundreds of steps, and each clustering
re-initialises it (measured on the CIFAR-10 subset: loss stuck at ln k, kNN flat). 128 < ``pca_dims``: the
whitening keeps all 128 dimensions.

Named differences from the reference: k-means++ seeding instead of faiss's random sample of points
(recovers separable clusters reliably, same cost order); the classifier's parameters share the trainer's
SGD (with momentum, its state dropped at each re-initialisation) where the reference gives them a
separate momentum-free SGD; no Sobel filter in front of the network (the paper's networks have none);
class ids are the k-means cluster ids (the reference renumbers the non-empty ones: the same up to a
permutation of the classifier's rows); whitening divides by sqrt(eigenvalue + 1e-8 x the largest) so
that a flat direction cannot blow up (faiss divides by sqrt(eigenvalue)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import require_choice, require_positive
from ..errors import ConfigError
from ..losses import PseudoLabelLoss
from ..ops import kmeans
from .base import Method, epoch_generator, epoch_seed


@dataclass
class DeepClusterConfig:
    """DeepCluster (Caron et al. 2018): k-means pseudo-labels of the embedding, re-clustered every few epochs."""

    clusters: int = 1000  # k of k-means (the paper's rows: 10, 100, 1000)
    reassign: int = 1  # re-cluster (and re-initialise the classifier) every this many epochs
    pca_dims: int = 256  # PCA-whitening keeps at most this many dimensions before k-means (DeepCluster: 256)
    kmeans_iterations: int = 20  # Lloyd iterations per clustering (DeepCluster's faiss niter: 20)
    classifier_optimizer: str = "reference"  # reference: the classifier's own SGD (no momentum, weight decay 1e-5; deepcluster main.py) | shared: the network's SGD

    # a run saved before classifier_optimizer existed trained with the network's SGD (config.completed)
    legacy_values: ClassVar[dict] = {"classifier_optimizer": "shared"}

    def check(self, prefix: str) -> None:
        require_positive(prefix, self, "clusters", "reassign", "pca_dims", "kmeans_iterations")
        require_choice(prefix, self, "classifier_optimizer", ("reference", "shared"))


def pca_whiten(x: torch.Tensor, dims: int, eps: float = 1e-8) -> torch.Tensor:
    """(N, D) -> (N, min(dims, D)) float32: centred, projected on the leading principal axes, each divided
    by the square root of its eigenvalue (faiss ``PCAMatrix(D, dims, eigen_power=-0.5)``), then
    L2-normalised (the reference's ``preprocess_features``). The covariance is computed in float64."""
    x64 = x.double()
    centred = x64 - x64.mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.t() @ centred / x.shape[0])   # ascending
    keep = min(dims, x.shape[1])
    eigenvalues, eigenvectors = eigenvalues.flip(0)[:keep], eigenvectors.flip(1)[:, :keep]
    scale = (eigenvalues.clamp_min(0) + eps * eigenvalues[0].clamp_min(1e-30)).rsqrt()
    return F.normalize(centred @ eigenvectors * scale, dim=1).float()


def uniform_cluster_order(labels: torch.Tensor, k: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(length,) instance ids drawn uniformly over the non-empty clusters of ``labels`` (N,) in 0..k-1, the
    reference's ``UnifLabelSampler``: each non-empty cluster contributes length // clusters + 1 draws,
    without replacement when it has more members than that, with replacement otherwise; the draws are
    shuffled and the first ``length`` kept. ``generator`` (CPU) makes it reproducible."""
    labels = labels.cpu()
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=k)
    starts = torch.cumsum(counts, 0) - counts
    non_empty = torch.nonzero(counts).flatten()
    per_cluster = length // len(non_empty) + 1
    draws = []
    for c in non_empty.tolist():
        size, members = int(counts[c]), order[int(starts[c]):int(starts[c]) + int(counts[c])]
        if size > per_cluster:
            pick = torch.randperm(size, generator=generator)[:per_cluster]
        else:
            pick = torch.randint(0, size, (per_cluster,), generator=generator)
        draws.append(members[pick])
    drawn = torch.cat(draws)
    return drawn[torch.randperm(drawn.shape[0], generator=generator)][:length]


class DeepCluster(Method):
    views = 1
    Config = DeepClusterConfig

    def __init__(self, encoder: nn.Module, num_instances: int, embedding_dim: int, clusters: int = 1000,
                 reassign: int = 1, pca_dims: int = 256, kmeans_iterations: int = 20, seed: int = 0,
                 classifier_optimizer: str = "reference"):
        super().__init__(encoder)
        if not 1 <= clusters <= num_instances:
            raise ConfigError(f"method.deepcluster.clusters={clusters}: expected 1..{num_instances} (the number "
                              f"of training images)")
        self.clusters, self.reassign, self.pca_dims = int(clusters), int(reassign), int(pca_dims)
        self.kmeans_iterations, self.seed = int(kmeans_iterations), int(seed)
        self.classifier_optimizer = classifier_optimizer
        self.classifier = nn.Linear(embedding_dim, clusters)
        self.register_buffer("labels", torch.full((num_instances,), -1, dtype=torch.long))
        self.loss = PseudoLabelLoss()
        self._order = None
        self._reinitialised = False

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        c = cls.settings(cfg)
        return cls(encoder, num_instances, cfg.model.embedding_dim, c.clusters, c.reassign, c.pca_dims,
                   c.kmeans_iterations, cfg.train.seed, c.classifier_optimizer)

    def parameter_groups(self):
        """``reference``: the classifier trains with its own SGD settings, as deepcluster's ``main.py`` builds a
        separate ``optimizer_tl`` for ``top_layer``: no momentum, weight decay 10^-5, the network's lr (both
        take ``args.lr``); ``shared``: the network's SGD (momentum, ``optim.weight_decay``)."""
        if self.classifier_optimizer == "shared":
            return super().parameter_groups()
        return self.groups_with_own_settings(self.classifier, momentum=0.0, weight_decay=1e-5)

    def cluster(self, features: torch.Tensor, epoch: int) -> torch.Tensor:
        """(N,) pseudo-labels of (N, d) features: PCA-whitening, L2 normalisation, k-means."""
        whitened = pca_whiten(features, self.pca_dims)
        return kmeans(whitened, self.clusters, seed=epoch_seed(self.seed, epoch, salt=3), max_iter=self.kmeans_iterations,
                      tol=0.0, empty="split")

    def on_epoch_start(self, epoch, train_features):
        self._reinitialised = (epoch - 1) % self.reassign == 0 or bool((self.labels < 0).any())
        if self._reinitialised:
            with torch.no_grad():
                layer = self.encoder.head(train_features(True).to(self.encoder.head.weight.dtype))  # before L2
            self.labels.copy_(self.cluster(layer, epoch).to(self.labels.device))
            weight = torch.empty(self.classifier.weight.shape).normal_(0, 0.01, generator=epoch_generator(
                self.seed, epoch, salt=2))
            with torch.no_grad():
                self.classifier.weight.copy_(weight)
                self.classifier.bias.zero_()
        generator = epoch_generator(self.seed, epoch, salt=1)
        order = uniform_cluster_order(self.labels, self.clusters, self.labels.shape[0], generator)
        self._order = order[:, None]                                      # (N, 1): one view per item
        counts = torch.bincount(self.labels, minlength=self.clusters)
        self._cluster_sizes = {"clusters_used": (counts > 0).sum().float(),   # reported with every step's loss
                               "largest_cluster_share": counts.max().float() / counts.sum()}

    def epoch_plan(self):
        return self._order

    def reinitialised_parameters(self):
        return list(self.classifier.parameters()) if self._reinitialised else []

    def training_step(self, views, rows):
        f = self.embed(views, normalized=False)[0]                        # (B, d), the clustered layer
        instances = self._order[:, 0].to(rows.device)[rows]
        loss = self.loss(f, self.labels[instances], self.classifier.weight, self.classifier.bias)
        return {"loss": loss, **self._cluster_sizes}   # the epoch's clusters: how many hold images, the largest's share
