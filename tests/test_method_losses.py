"""The compared methods' losses against naive float64 loops of their formulas (values and gradients),
plus the memory-bank update, NCE's normalising-constant estimate and the triplet negative sampler."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from invaspread.losses import (ExemplarLoss, NCELoss, NPSoftmaxLoss, TripletLoss, estimate_nce_z,
                               sample_random_negatives)
from invaspread.methods import MemoryBank


def unit_rows(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


def assert_matches(ours_fn, naive_fn, inputs, grad_of):
    """Value (float64) and the gradients of ``inputs[i] for i in grad_of`` agree to float64 precision."""
    a = [x.clone().requires_grad_(i in grad_of) for i, x in enumerate(inputs)]
    b = [x.clone().requires_grad_(i in grad_of) for i, x in enumerate(inputs)]
    ours, ref = ours_fn(*a), naive_fn(*b)
    assert ours.dtype == torch.float64
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-12)
    ours.backward()
    ref.backward()
    for i in grad_of:
        torch.testing.assert_close(a[i].grad, b[i].grad, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- NPSoftmax (paper Eq. 2)

def naive_npsoftmax(f, index, bank, tau):
    total = 0.0
    for b in range(f.shape[0]):
        scores = [torch.exp(torch.dot(bank[j], f[b]) / tau) for j in range(bank.shape[0])]
        total = total - torch.log(scores[int(index[b])] / sum(scores))
    return total / f.shape[0]


@pytest.mark.parametrize("b,n,d,tau", [(3, 7, 4, 0.1), (5, 11, 8, 0.07), (1, 4, 3, 0.5)])
def test_npsoftmax_matches_eq2_loop(b, n, d, tau):
    f, bank = unit_rows(b, d, 1), unit_rows(n, d, 2)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(3))[:b]
    before = bank.clone()
    assert_matches(lambda f_: NPSoftmaxLoss(tau)(f_, index, bank), lambda f_: naive_npsoftmax(f_, index, bank, tau),
                   [f], grad_of=[0])
    assert torch.equal(bank, before), "the loss must not change the bank"
    assert NPSoftmaxLoss(tau)(f.float(), index, bank.float()).dtype == torch.float32


def test_memory_bank_update_matches_formula():
    bank = MemoryBank(9, 5, momentum=0.5)
    bank.features.copy_(unit_rows(9, 5, 4).float())
    before = bank.features.clone()
    index, f = torch.tensor([7, 2, 4]), unit_rows(3, 5, 5).float()
    bank.update(index, f)
    for row in range(9):
        if row in index.tolist():
            b = index.tolist().index(row)
            v = 0.5 * before[row].double() + 0.5 * f[b].double()
            torch.testing.assert_close(bank.features[row].double(), v / v.norm(), rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(bank.features[row], before[row])
    torch.testing.assert_close(bank.features.norm(dim=1), torch.ones(9))


# ---------------------------------------------------------------- NCE (lemniscate's NCECriterion)

def naive_nce(f, index, bank, noise, z, tau, eps=1e-7):
    n, k = bank.shape[0], noise.shape[1]
    pn = 1.0 / n
    total = 0.0
    for b in range(f.shape[0]):
        p = torch.exp(torch.dot(bank[int(index[b])], f[b]) / tau) / z
        total = total + torch.log(p / (p + k * pn + eps))
        for j in noise[b].tolist():
            pj = torch.exp(torch.dot(bank[j], f[b]) / tau) / z
            total = total + torch.log(k * pn / (pj + k * pn + eps))
    return -total / f.shape[0]


@pytest.mark.parametrize("b,n,d,k,tau", [(3, 10, 4, 5, 0.1), (4, 50, 8, 12, 0.07), (2, 6, 3, 6, 0.5)])
def test_nce_matches_criterion_loop_and_z_estimate(b, n, d, k, tau):
    g = torch.Generator().manual_seed(b * 10 + k)
    f, bank = unit_rows(b, d, 6), unit_rows(n, d, 7)
    index = torch.randperm(n, generator=g)[:b]
    noise = torch.randint(0, n, (b, k), generator=g)
    z_naive = n * np.mean([math.exp(float(bank[j] @ f[i]) / tau)
                           for i in range(b) for j in [int(index[i])] + noise[i].tolist()])
    z = estimate_nce_z(f, index, bank, noise, tau)
    assert z == pytest.approx(z_naive, rel=1e-12)
    for zz in (z, 3.7 * z, torch.tensor(z)):  # a float or a 0-d tensor (a method's buffer)
        assert_matches(lambda f_: NCELoss(tau)(f_, index, bank, noise, zz),
                       lambda f_: naive_nce(f_, index, bank, noise, float(zz), tau), [f], grad_of=[0])


def test_nce_stays_finite_when_a_score_dominates():
    f = unit_rows(2, 4, 0).float()
    bank = torch.cat([f, unit_rows(6, 4, 1).float()])
    loss = NCELoss(0.01)(f, torch.tensor([0, 1]), bank, torch.tensor([[0, 1, 2], [1, 0, 3]]), 1e-3)
    assert torch.isfinite(loss)


# ---------------------------------------------------------------- Exemplar CNN (paper Eq. 1)

def naive_exemplar(f, index, w, tau, normalize):
    total = 0.0
    for b in range(f.shape[0]):
        rows = [w[j] / w[j].norm() if normalize else w[j] for j in range(w.shape[0])]
        scores = [torch.exp(torch.dot(r, f[b]) / tau) for r in rows]
        total = total - torch.log(scores[int(index[b])] / sum(scores))
    return total / f.shape[0]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("b,n,d,tau", [(4, 6, 5, 0.1), (3, 9, 3, 0.3)])
def test_exemplar_matches_eq1_loop_for_features_and_weights(normalize, b, n, d, tau):
    f = unit_rows(b, d, 8)
    w = 0.7 * torch.randn(n, d, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    index = torch.tensor([1, 0, 4, 2][:b])
    assert_matches(lambda f_, w_: ExemplarLoss(tau, normalize)(f_, index, w_),
                   lambda f_, w_: naive_exemplar(f_, index, w_, tau, normalize), [f, w], grad_of=[0, 1])


def naive_exemplar_literal(f, index, w):
    """Eq. 1 as printed: P(i | x_j) = exp(w_i^T f_j) / sum_k exp(w_k^T f_j), raw rows, no temperature."""
    total = 0.0
    for b in range(f.shape[0]):
        scores = [torch.exp(torch.dot(w[k], f[b])) for k in range(w.shape[0])]
        total = total - torch.log(scores[int(index[b])] / sum(scores))
    return total / f.shape[0]


@pytest.mark.parametrize("tau, normalize", [(0.1, True), (0.3, False)])   # both ignored by the literal reading
def test_exemplar_literal_is_eq1_as_printed(tau, normalize):
    f = unit_rows(4, 5, 3)
    w = 0.7 * torch.randn(7, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    index = torch.tensor([6, 0, 2, 2])
    assert_matches(lambda f_, w_: ExemplarLoss(tau, normalize, literal=True)(f_, index, w_),
                   lambda f_, w_: naive_exemplar_literal(f_, index, w_), [f, w], grad_of=[0, 1])


# ---------------------------------------------------------------- Triplet (random and batch-hard)

def naive_triplet(z1, z2, margin, negatives):
    """negatives: a list of row indices, or "hard" for the closest row of another instance."""
    n = z1.shape[0]
    x = torch.cat([z1, z2])
    total = 0.0
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        if negatives == "hard":
            others = [j for j in range(2 * n) if j % n != a % n]
            neg = min(others, key=lambda j: float((x[a] - x[j]).norm().detach()))
        else:
            neg = int(negatives[a])
        total = total + torch.clamp((x[a] - x[p]).norm() - (x[a] - x[neg]).norm() + margin, min=0)
    return total / (2 * n)


@pytest.mark.parametrize("negatives", ["random", "hard"])
@pytest.mark.parametrize("n,d,margin", [(2, 3, 0.5), (5, 8, 0.5), (6, 4, 1.5)])
def test_triplet_matches_loop(negatives, n, d, margin):
    z1 = unit_rows(n, d, 10)
    z2 = F.normalize(z1 + 0.6 * unit_rows(n, d, 11), dim=1)
    drawn = sample_random_negatives(n, generator=torch.Generator().manual_seed(5))
    ours = lambda a, b: TripletLoss(margin, negatives)(a, b, generator=torch.Generator().manual_seed(5))  # noqa: E731
    assert_matches(ours, lambda a, b: naive_triplet(a, b, margin, "hard" if negatives == "hard" else drawn),
                   [z1, z2], grad_of=[0, 1])


def test_random_negatives_are_uniform_over_the_other_instances():
    n, draws = 5, 4000
    g = torch.Generator().manual_seed(0)
    picks = torch.stack([sample_random_negatives(n, generator=g) for _ in range(draws)])   # (draws, 2N)
    for a in range(2 * n):
        col = picks[:, a].numpy()
        assert np.all(col % n != a % n), "a negative of another instance, never the anchor's own views"
        counts = np.bincount(col, minlength=2 * n)[[j for j in range(2 * n) if j % n != a % n]]
        assert stats.chisquare(counts).pvalue > 1e-4, (a, counts)
