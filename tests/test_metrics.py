"""Evaluation metrics against independent references: brute-force numpy loops and scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier

from invaspread.evaluate import knn_accuracy, knn_classify
from invaspread.evaluate.linear import linear_probe
from invaspread.evaluate import nmi, normalized_mutual_info, recall_at_k
from invaspread.ops import kmeans


def clustered(n, d, classes, noise, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    labels = rng.integers(0, classes, n)
    x = centres[labels] + noise * rng.normal(size=(n, d))
    return x.astype(np.float32), labels


def brute_force_weighted_knn(train, train_labels, test, k, tau, classes):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    preds, scores_all = [], []
    for q in test:
        sims = train @ q
        nearest = np.argsort(-sims, kind="stable")[:k]
        scores = np.zeros(classes)
        for j in nearest:
            scores[train_labels[j]] += np.exp(sims[j] / tau)
        preds.append(int(np.argmax(scores)))
        scores_all.append(scores)
    return np.array(preds), np.array(scores_all)


@pytest.mark.parametrize("k,tau,chunk", [(1, 0.1, 7), (10, 0.1, 1024), (50, 0.5, 13), (500, 0.07, 64)])
def test_knn_matches_brute_force(k, tau, chunk):
    train, ytr = clustered(300, 16, 6, 2.0, seed=0)
    test, yte = clustered(80, 16, 6, 2.0, seed=1)
    ours = knn_classify(torch.tensor(train), torch.tensor(ytr), torch.tensor(test), k, tau, 6, chunk_size=chunk)
    ref, scores = brute_force_weighted_knn(train, ytr, test, min(k, 300), tau, 6)
    assert np.array_equal(ours.numpy(), ref)
    acc = knn_accuracy(torch.tensor(train), torch.tensor(ytr), torch.tensor(test), torch.tensor(yte), k, tau, 6,
                       chunk_size=chunk)
    top5 = np.argsort(-scores, axis=1)[:, :5]
    assert acc["top1"] == pytest.approx(100 * np.mean(ref == yte))
    hits5 = [y in row and s[y] > 0 for y, row, s in zip(yte, top5, scores)]
    assert acc["top5"] == pytest.approx(100 * np.mean(hits5))


@pytest.mark.parametrize("tau", [0.01, 0.001])
def test_knn_with_tiny_temperature_does_not_overflow(tau):
    """exp(sim / 0.001) overflows float32 and float64: votes are compared in log space (per-class
    log-sum-exp in float64 here, from scipy), so the prediction is the brute-force one."""
    from scipy.special import logsumexp

    x, y = clustered(600, 16, 6, 2.0, seed=4)
    train, test, ty = x[:500], x[500:], y[:500]
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    qn = test / np.linalg.norm(test, axis=1, keepdims=True)
    expected = []
    for q in qn:
        sims = tn @ q
        nearest = np.argsort(-sims, kind="stable")[:40]
        scores = [logsumexp([sims[j] / tau for j in nearest if ty[j] == c]) if (ty[nearest] == c).any() else -np.inf
                  for c in range(6)]
        expected.append(int(np.argmax(scores)))
    ours = knn_classify(torch.tensor(train), torch.tensor(ty), torch.tensor(test), k=40, temperature=tau,
                        num_classes=6).numpy()
    np.testing.assert_array_equal(ours, expected)
    acc = knn_accuracy(torch.tensor(train), torch.tensor(ty), torch.tensor(test), torch.tensor(y[500:]), k=40,
                       temperature=tau, num_classes=6)
    assert acc["top1"] == pytest.approx(100 * np.mean(np.array(expected) == y[500:]))


def test_knn_with_large_temperature_is_majority_vote_like_sklearn():
    # exp(sim / tau) -> 1 as tau -> inf: a plain majority vote, which KNeighborsClassifier computes.
    # Odd k and two classes so that no vote ties.
    train, ytr = clustered(400, 8, 2, 3.0, seed=2)
    test, _ = clustered(100, 8, 2, 3.0, seed=3)
    train_n = train / np.linalg.norm(train, axis=1, keepdims=True)
    test_n = test / np.linalg.norm(test, axis=1, keepdims=True)
    sk = KNeighborsClassifier(n_neighbors=15, metric="cosine", algorithm="brute").fit(train_n, ytr).predict(test_n)
    ours = knn_classify(torch.tensor(train), torch.tensor(ytr), torch.tensor(test), 15, 1e6, 2)
    assert np.array_equal(ours.numpy(), sk)


def brute_force_recall(x, y, ks):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    hits = {k: 0 for k in ks}
    for i in range(len(x)):
        sims = x @ x[i]
        sims[i] = -np.inf
        order = np.argsort(-sims, kind="stable")
        for k in ks:
            hits[k] += int(np.any(y[order[:k]] == y[i]))
    return {k: 100.0 * hits[k] / len(x) for k in ks}


@pytest.mark.parametrize("chunk", [1, 17, 256])
def test_recall_at_k_matches_brute_force(chunk):
    x, y = clustered(240, 12, 30, 2.5, seed=4)
    ks = (1, 2, 4, 8, 16)
    ours = recall_at_k(torch.tensor(x), y, ks, chunk_size=chunk)
    ref = brute_force_recall(x, y, ks)
    for k in ks:
        assert ours[k] == pytest.approx(ref[k])
    assert all(ours[a] <= ours[b] for a, b in zip(ks, ks[1:]))


def test_recall_excludes_the_query_itself():
    # every item has a unique label: without excluding the query, R@1 would be 100
    x = torch.randn(50, 8)
    assert recall_at_k(x, np.arange(50), (1, 4))[1] == 0.0


@pytest.mark.parametrize("average", ["arithmetic", "geometric"])
def test_both_nmi_normalisations_match_sklearn_average_method(average):
    """eval.nmi_average: geometric is what the released code's scikit-learn (before 0.22) computed."""
    rng = np.random.default_rng(11)
    for _ in range(5):
        a, b = rng.integers(0, 9, 400), rng.integers(0, 5, 400)
        want = normalized_mutual_info_score(a, b, average_method=average)
        assert normalized_mutual_info(a, b, average) == pytest.approx(want, abs=1e-10)
    a = rng.integers(0, 3, 300)
    b = 2 * a + rng.integers(0, 2, 300)   # b refines a: I = H(a) < H(b), so the two normalisations differ
    assert normalized_mutual_info(a, b, "geometric") > normalized_mutual_info(a, b, "arithmetic") + 0.02


def test_nmi_formula_matches_sklearn():
    rng = np.random.default_rng(5)
    for _ in range(5):
        a, b = rng.integers(0, 7, 500), rng.integers(0, 4, 500)
        assert normalized_mutual_info(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-10)
    assert normalized_mutual_info(a, a) == pytest.approx(1.0)


def test_kmeans_recovers_separated_clusters_like_sklearn():
    x, y = clustered(600, 10, 8, 0.05, seed=6)
    ours = kmeans(torch.tensor(x), 8, seed=0).numpy()
    sk = KMeans(8, n_init=1, random_state=0).fit_predict(x)
    assert normalized_mutual_info_score(sk, ours) == pytest.approx(1.0)
    assert normalized_mutual_info_score(y, ours) == pytest.approx(1.0)


def test_batched_seeding_stays_close_to_exact_kmeans_pp_with_many_clusters():
    x, y = clustered(3000, 16, 60, 0.1, seed=10)
    sk = normalized_mutual_info_score(y, KMeans(60, n_init=1, random_state=0).fit_predict(x))
    exact = normalized_mutual_info_score(y, kmeans(torch.tensor(x), 60, seed=0, seeds_per_pass=1).numpy())
    batched = normalized_mutual_info_score(y, kmeans(torch.tensor(x), 60, seed=0, seeds_per_pass=4).numpy())
    assert exact == pytest.approx(sk, abs=0.01)
    assert batched > exact - 0.03


def test_nmi_pipeline_close_to_sklearn_on_overlapping_clusters():
    x, y = clustered(800, 16, 10, 1.2, seed=7)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sk = 100 * normalized_mutual_info_score(y, KMeans(10, n_init=10, random_state=0).fit_predict(xn))
    assert nmi(torch.tensor(x), y, seed=0) == pytest.approx(sk, abs=3.0)


def test_linear_probe_close_to_sklearn_logistic_regression():
    x, y = clustered(900, 20, 5, 3.0, seed=8)
    xtr, ytr, xte, yte = x[:600], y[:600], x[600:], y[600:]
    ours = linear_probe(torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), torch.tensor(yte))
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    sk = 100 * LogisticRegression(C=1e3, max_iter=5000).fit(norm(xtr), ytr).score(norm(xte), yte)
    assert ours == pytest.approx(sk, abs=2.0)
    assert ours > 60  # well above the 20% of chance
