"""The ``method`` section of the config: which compared system trains, and each one's own settings
(``method.NAME.key``). Loaded, overridden and checked like every other section (``invaspread.config``)."""

from __future__ import annotations

from dataclasses import dataclass, field

METHOD_NAMES = ("invaspread", "random", "exemplar", "npsoftmax", "nce", "triplet", "triplet_hard", "deepcluster", "mom")


@dataclass
class ExemplarConfig:
    """Exemplar CNN (Dosovitskiy et al.; paper Eq. 1): a learned weight row per training instance."""

    temperature: float = 0.1  # softmax temperature over the n instance weights
    normalize_weights: bool = True  # L2-normalise the rows of W (cosine classifier); false: plain w_i . f logits
    literal: bool = False  # Eq. 1 as printed: exp(w_i . f) over raw rows, no temperature (ignores the two keys above)


@dataclass
class NPSoftmaxConfig:
    """Non-parametric softmax over a memory bank (Wu et al. 2018; paper Eq. 2)."""

    temperature: float = 0.1  # softmax temperature over the n bank entries
    momentum: float = 0.5  # bank update v_i <- normalise(m v_i + (1 - m) f_i)


@dataclass
class NCEConfig:
    """Noise-contrastive estimation over the same memory bank (Wu et al. 2018)."""

    temperature: float = 0.1  # tau of P(i | f) = exp(v_i . f / tau) / Z
    momentum: float = 0.5  # bank update v_i <- normalise(m v_i + (1 - m) f_i)
    noise: int = 4096  # K noise entries drawn uniformly per instance and step


@dataclass
class TripletConfig:
    """Triplet loss over the batch's two views (methods triplet and triplet_hard)."""

    margin: float = 0.5  # m of max(0, d(a, p) - d(a, n) + m) (paper Section 4.1: 0.5)


@dataclass
class DeepClusterConfig:
    """DeepCluster (Caron et al. 2018): k-means pseudo-labels of the embedding, re-clustered every few epochs."""

    clusters: int = 1000  # k of k-means (the paper's rows: 10, 100, 1000)
    reassign: int = 1  # re-cluster (and re-initialise the classifier) every this many epochs
    pca_dims: int = 256  # PCA-whitening keeps at most this many dimensions before k-means (DeepCluster: 256)
    kmeans_iterations: int = 20  # Lloyd iterations per clustering (DeepCluster's faiss niter: 20)
    classifier_optimizer: str = "reference"  # reference: the classifier's own SGD (no momentum, weight decay 1e-5; deepcluster main.py) | shared: the network's SGD


@dataclass
class MOMConfig:
    """Mining on Manifolds (Iscen et al. 2018): triplets mined from a kNN graph's manifold similarity."""

    features: str = "pooled"  # mine on "pooled" backbone features (the reference's descriptors) or the "embedding"
    graph_neighbours: int = 30  # k of the mutual kNN graph (reference: 30)
    similarity_power: float = 3.0  # edge weight = similarity ** power (reference: 3)
    alpha: float = 0.99  # random-walk restart: f = (I - alpha S)^-1 e_anchor (reference: 0.99)
    cg_iterations: int = 20  # conjugate-gradient iterations per anchor (reference's pcg: 20)
    anchors: str = "all"  # "all" images (reference's fine-grained setup) | "local_max" of the random walk (retrieval)
    num_anchors: int = 1500  # anchors=local_max: keep the strongest this many (reference: 1500)
    positive_k: int = 50  # positives: manifold top-k that are not Euclidean top-k (reference: 50)
    negative_k: int = 100  # negatives: Euclidean top-k that are not manifold top-k (reference, CUB: 100)
    pool_size: int = 50  # keep at most this many positives / negatives per anchor (reference: 50)
    negative_candidates: int = 10  # a tuple's negative: uniform among the pool's this-many closest (reference: 10)
    margin: float = 0.5  # m of max(0, m + d2(a, p) - d2(a, n)) (reference: 0.5)
    remine_every: int = 0  # mine again every E epochs; 0 = once, from the initial network (the paper's MOM)


@dataclass
class MethodConfig:
    """Which system trains the embedding; the InvaSpread loss itself is configured in ``loss``."""

    name: str = "invaspread"  # invaspread | random | exemplar | npsoftmax | nce | triplet | triplet_hard | deepcluster | mom
    exemplar: ExemplarConfig = field(default_factory=ExemplarConfig)
    npsoftmax: NPSoftmaxConfig = field(default_factory=NPSoftmaxConfig)
    nce: NCEConfig = field(default_factory=NCEConfig)
    triplet: TripletConfig = field(default_factory=TripletConfig)
    deepcluster: DeepClusterConfig = field(default_factory=DeepClusterConfig)
    mom: MOMConfig = field(default_factory=MOMConfig)
