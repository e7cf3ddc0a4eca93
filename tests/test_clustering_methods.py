"""DeepCluster and MOM against independent references: scikit-learn's k-means and PCA, a chi-square test of
the cluster-uniform sampler, float64 dense linear algebra for the manifold similarity, brute-force loops for
the graph and the losses, and mining on two concentric manifolds."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from invaspread.losses import PseudoLabelLoss, WeightedTripletLoss
from invaspread.methods.deepcluster import DeepCluster, pca_whiten, uniform_cluster_order
from invaspread.methods.mom import draw_tuples, mine_pools
from invaspread.models import build_model
from invaspread.config import load_config
from invaspread.ops.kmeans import _split_empty_clusters, kmeans
from invaspread.ops.manifold import (local_maxima, manifold_similarity, mutual_knn_graph, normalized_affinity,
                                     stationary_distribution)


def blobs(n_per=60, k=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 10
    x = torch.cat([c + torch.randn(n_per, d, generator=g) for c in centres])
    return x, torch.arange(k).repeat_interleave(n_per)


# --- DeepCluster ------------------------------------------------------------------------------------------

def test_deepcluster_pseudo_labels_match_scikit_learn_kmeans_on_separable_data():
    x, truth = blobs()
    method = DeepCluster(torch.nn.Identity(), x.shape[0], 8, clusters=6, pca_dims=256)
    ours = method.cluster(x, epoch=1).numpy()
    whitened = pca_whiten(x, 256).numpy()
    theirs = KMeans(6, n_init=10, random_state=0).fit_predict(whitened)
    assert adjusted_rand_score(theirs, ours) == 1.0
    assert adjusted_rand_score(truth.numpy(), ours) == 1.0


def test_pca_whitening_equals_scikit_learn_whitened_pca_then_l2_normalisation():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 12, generator=g) @ torch.randn(12, 12, generator=g) + 3
    ours = pca_whiten(x, 5, eps=0.0).double().numpy()
    ref = PCA(5, whiten=True).fit_transform(x.double().numpy())
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    signs = np.sign((ours * ref).sum(0))                      # principal axes are defined up to sign
    np.testing.assert_allclose(ours * signs, ref, atol=1e-5)
    assert ours.shape == (500, 5)


def test_empty_cluster_split_copies_a_cluster_of_size_at_least_two_in_proportion_to_size_minus_one():
    counts = torch.tensor([0.0, 1.0, 3.0, 5.0])
    picks = []
    g = torch.Generator().manual_seed(0)
    for _ in range(3000):
        centres = torch.arange(16.0).view(4, 4) + 1
        assert _split_empty_clusters(centres, counts, g) == 1
        picked = int(torch.nonzero((centres[0] / centres).sub(1).abs().max(1).values < 0.01).flatten()[-1])
        eps = 1 / 1024
        sign = torch.tensor([1.0, -1.0, 1.0, -1.0])
        original = torch.arange(16.0).view(4, 4)[picked] + 1
        torch.testing.assert_close(centres[0], original * (1 + eps * sign))
        torch.testing.assert_close(centres[picked], original * (1 - eps * sign))
        picks.append(picked)
    observed = np.bincount(picks, minlength=4)
    assert observed[1] == 0, "a cluster of one point is never split"
    assert chisquare(observed[2:], np.array([2, 4]) / 6 * len(picks)).pvalue > 1e-3


def test_kmeans_with_split_never_leaves_a_cluster_empty_where_keep_does():
    # 3 tight far-apart groups and k = 4: every solution has a spare centre; "split" keeps it populated
    x, _ = blobs(n_per=50, k=3, d=4, seed=3)
    ids = kmeans(x, 4, seed=0, max_iter=20, tol=0.0, empty="split")
    assert torch.bincount(ids, minlength=4).min() > 0
    with pytest.raises(ValueError, match="k=500"):
        kmeans(x, 500)


def test_uniform_cluster_sampler_draws_clusters_uniformly_whatever_their_sizes():
    sizes = [3, 30, 300, 0, 1667]                             # one empty cluster, never drawn
    labels = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    labels = labels[torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(0))]
    order = uniform_cluster_order(labels, 5, labels.shape[0], torch.Generator().manual_seed(1))
    assert order.shape == labels.shape
    drawn = np.bincount(labels[order].numpy(), minlength=5)
    assert drawn[3] == 0
    # per cluster: length // 4 + 1 = 501 draws, cut to 2,000 after the shuffle -> uniform up to the cut
    assert chisquare(drawn[[0, 1, 2, 4]]).pvalue > 1e-3
    big = order[labels[order] == 4]
    assert big.unique().numel() == big.numel(), "a cluster larger than its share is drawn without replacement"


def test_deepcluster_reassigns_every_reassign_epochs_and_reinitialises_its_classifier():
    cfg = load_config(None, ["model.width=8", "model.embedding_dim=16", "method.name=deepcluster",
                             "method.deepcluster.clusters=4", "method.deepcluster.reassign=2"])
    method = DeepCluster.from_config(cfg, build_model(cfg.model), 40)
    pooled_dims = method.encoder.backbone.out_features
    feats = [torch.randn(40, pooled_dims, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    requested = []
    method.on_epoch_start(1, lambda pooled: requested.append(pooled) or feats[0])
    assert requested == [True], "the pooled features, through the embedding layer (before L2) by the method"
    expected = method.cluster(method.encoder.head(feats[0]).detach(), 1)
    assert torch.equal(method.labels, expected), "DeepCluster clusters the classifier's input layer"
    assert method.reinitialised_parameters()
    first = method.labels.clone()
    assert method.classifier.weight.std().item() == pytest.approx(0.01, rel=0.3)
    assert torch.all(method.classifier.bias == 0)
    with torch.no_grad():
        method.classifier.weight.add_(1.0)
    method.on_epoch_start(2, lambda pooled: feats[1])          # not a reassignment epoch
    assert torch.equal(method.labels, first) and method.reinitialised_parameters() == []
    assert method.classifier.weight.mean().item() > 0.5, "the classifier keeps training between reassignments"
    method.on_epoch_start(3, lambda pooled: feats[2])
    assert method.reinitialised_parameters() and method.classifier.weight.abs().max().item() < 0.1
    plan = method.epoch_plan()
    assert plan.shape == (40, 1) and 0 <= int(plan.min()) and int(plan.max()) < 40


def test_pseudo_label_loss_equals_a_float64_loop():
    g = torch.Generator().manual_seed(0)
    f, w, b = torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g), torch.randn(4, generator=g)
    y = torch.tensor([0, 3, 1, 1, 2, 0])
    ours = PseudoLabelLoss()(f, y, w, b)
    total = 0.0
    for i in range(6):
        logits = [sum(float(w[c, j]) * float(f[i, j]) for j in range(5)) + float(b[c]) for c in range(4)]
        total -= logits[int(y[i])] - math.log(sum(math.exp(v) for v in logits))
    assert ours.item() == pytest.approx(total / 6, rel=1e-6)


# --- MOM --------------------------------------------------------------------------------------------------

def test_weighted_triplet_loss_and_gradient_equal_a_float64_loop():
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.nn.functional.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=1)
               for _ in range(3))
    a.requires_grad_(True)
    w = torch.rand(5, generator=g, dtype=torch.float64)
    loss = WeightedTripletLoss(0.5)(a, p, n, w)
    loss.backward()
    expected, grad = 0.0, torch.zeros_like(a)
    for i in range(5):
        d_ap = sum((a[i, j].item() - p[i, j].item()) ** 2 for j in range(3))
        d_an = sum((a[i, j].item() - n[i, j].item()) ** 2 for j in range(3))
        hinge = 0.5 + d_ap - d_an
        if hinge > 0:
            expected += w[i].item() * hinge / 5
            for j in range(3):   # d/da [(a-p)^2 - (a-n)^2] = 2(a-p) - 2(a-n) = 2(n-p)
                grad[i, j] = w[i].item() * 2 * (n[i, j].item() - p[i, j].item()) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    torch.testing.assert_close(a.grad, grad, atol=1e-12, rtol=0)


def small_graph_features(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=1)


def test_mutual_knn_graph_equals_a_brute_force_loop():
    x = small_graph_features()
    k, n = 7, x.shape[0]
    w = mutual_knn_graph(x, k, 3.0).to_dense()
    sims = x @ x.t()
    knn = [set(sims[i].argsort(descending=True)[:k].tolist()) for i in range(n)]   # itself included
    expected = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in knn[i]:
            if i != j and i in knn[j]:
                expected[i, j] = max(sims[i, j].item(), 0.0) ** 3
    torch.testing.assert_close(w, expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(w, w.t())


def test_manifold_similarity_equals_dense_float64_inverse_and_truncates_like_pcg():
    x = small_graph_features()
    w = mutual_knn_graph(x, 8, 3.0)
    s = normalized_affinity(w)
    dense_w = w.to_dense()
    d = dense_w.sum(1)
    inv_sqrt = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d))
    dense_s = inv_sqrt[:, None] * dense_w * inv_sqrt[None, :]
    torch.testing.assert_close(s.to_dense(), dense_s)
    sources = torch.tensor([0, 5, 17, 59])
    a = torch.eye(60, dtype=torch.float64) - 0.99 * dense_s
    exact = torch.linalg.solve(a, torch.eye(60, dtype=torch.float64)[:, sources])
    converged = manifold_similarity(s, sources, alpha=0.99, iterations=500, tol=1e-13)
    torch.testing.assert_close(converged, exact, atol=1e-9, rtol=1e-9)
    # the reference's 20 iterations: plain conjugate gradients in float64, iterate of least residual
    truncated = manifold_similarity(s, sources, alpha=0.99, iterations=20)
    for col, q in enumerate(sources.tolist()):
        b = torch.zeros(60, dtype=torch.float64)
        b[q] = 1
        xk, r = torch.zeros(60, dtype=torch.float64), b.clone()
        p, best, best_res = r.clone(), xk.clone(), 1.0
        for _ in range(20):
            ap = a @ p
            step = (r @ r) / (p @ ap)
            xk, r_new = xk + step * p, r - step * ap
            if r_new.norm() < best_res:
                best, best_res = xk.clone(), r_new.norm().item()
            p, r = r_new + (r_new @ r_new) / (r @ r) * p, r_new
        torch.testing.assert_close(truncated[:, col], best, atol=1e-10, rtol=1e-8)


def test_stationary_distribution_and_local_maxima_equal_dense_loops():
    x = small_graph_features(40, seed=2)
    w = mutual_knn_graph(x, 6, 3.0)
    dense = w.to_dense()
    deg = dense.sum(1)
    transition = torch.where(deg[:, None] > 0, dense / deg.clamp_min(1e-300)[:, None], torch.zeros_like(dense))
    r = torch.full((40,), 1 / 40, dtype=torch.float64)
    for _ in range(1000):
        r = r @ transition
        r = r / r.norm()
    ours = stationary_distribution(w)
    torch.testing.assert_close(ours, r)
    expected = [i for i in range(40) if (dense[i] > 0).any() and ours[i] > ours[dense[i] > 0].max()]
    assert local_maxima(w, ours).tolist() == expected


def rings(n=600, gap=1.3, seed=0):
    """Two concentric circles (lifted to 3-d so that cosine similarity sees the plane)."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    ring = (torch.arange(n) >= n // 2).long()
    radius = 1 + ring * (gap - 1)
    x = torch.stack([radius * angle.cos(), radius * angle.sin(), torch.full((n,), 3.0)], 1)
    return x + 0.01 * torch.randn(n, 3, generator=g), ring


def test_mined_positives_follow_the_manifold_and_negatives_cross_it():
    x, ring = rings()
    pools = mine_pools(x, graph_neighbours=10, positive_k=20, negative_k=40, pool_size=20)
    pos, neg = pools["positives"], pools["negatives"]
    assert pools["anchor"].all()
    same_ring = (ring[pos.clamp_min(0)] == ring[:, None])[pos >= 0]
    crossing = (ring[neg.clamp_min(0)] != ring[:, None])[neg >= 0]
    assert same_ring.numel() > 500 and same_ring.all(), "every positive lies on the anchor's own circle"
    assert crossing.numel() > 2000 and crossing.float().mean() > 0.8, "negatives are mostly on the other circle"
    assert (pools["positive_weights"][pos >= 0] > 0).all() and (pools["positive_weights"][pos < 0] == 0).all()
    # no positive is a Euclidean top-20 neighbour, no negative a manifold top-40 neighbour (spot check, brute force)
    sims = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(x, dim=1).t()
    for anchor in (0, 123, 450):
        euclid = set(sims[anchor].argsort(descending=True)[:20].tolist())
        assert not euclid & set(pos[anchor][pos[anchor] >= 0].tolist())


def test_draw_tuples_picks_negatives_among_the_closest_candidates_of_the_pool():
    x, _ = rings(200)
    pools = mine_pools(x, graph_neighbours=10, positive_k=20, negative_k=40, pool_size=20)
    embedding = torch.nn.functional.normalize(x, dim=1)
    plan, weights = draw_tuples(pools, embedding, 3000, 3, torch.Generator().manual_seed(0))
    assert plan.shape == (3000, 3) and weights.shape == (3000,)
    for a, p, n in plan[:300].tolist():
        assert p in pools["positives"][a].tolist()
        pool = [i for i in pools["negatives"][a].tolist() if i >= 0]
        dist = sorted(((embedding[a] - embedding[i]) ** 2).sum().item() for i in pool)
        assert ((embedding[a] - embedding[n]) ** 2).sum().item() <= dist[min(3, len(dist)) - 1] + 1e-6
    slot = [pools["positives"][a].tolist().index(p) for a, p, _ in plan.tolist()]
    torch.testing.assert_close(weights, pools["positive_weights"][plan[:, 0], torch.tensor(slot)])
