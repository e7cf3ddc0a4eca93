"""InvaSpreadLoss against naive float64 double loops written straight from the equations."""

import math

import pytest
import torch
import torch.nn.functional as F

from invaspread.losses import InvaSpreadLoss, log_one_minus_softmax


def naive_reference(z1, z2, tau, stop_gradient):
    """Released-code loss, one scalar at a time (see the issue / module docstring)."""
    n = z1.shape[0]
    x = torch.cat([z1, z2])
    key = x.detach() if stop_gradient else x
    total = 0.0
    for a in range(2 * n):
        p = a + n if a < n else a - n
        s = [torch.dot(x[a], key[k]) / tau for k in range(2 * n)]
        z = sum(torch.exp(s[k]) for k in range(2 * n) if k != a)
        total = total + torch.log(torch.exp(s[p]) / z)
        for j in range(2 * n):
            if j not in (a, p):
                total = total + torch.log(1 - torch.exp(s[j]) / z)
    return -total / (2 * n)


def naive_paper(f, f_hat, tau, stop_gradient):
    """Eq. 3-7 of the paper, divided by N."""
    n = f.shape[0]
    w = f.detach() if stop_gradient else f
    total = 0.0
    for i in range(n):
        num = torch.exp(torch.dot(w[i], f_hat[i]) / tau)
        den = sum(torch.exp(torch.dot(w[k], f_hat[i]) / tau) for k in range(n))
        total = total - torch.log(num / den)                                   # Eq. 3
        for j in range(n):
            if j == i:
                continue
            num = torch.exp(torch.dot(w[i], f[j]) / tau)
            den = sum(torch.exp(torch.dot(w[k], f[j]) / tau) for k in range(n))  # Eq. 4, k = j included
            total = total - torch.log(1 - num / den)
    return total / n


NAIVE = {"reference": naive_reference, "paper": naive_paper}


def random_views(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    z2 = F.normalize(z1 + 0.5 * torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    return z1, z2


@pytest.mark.parametrize("variant", ["reference", "paper"])
@pytest.mark.parametrize("stop_gradient", [True, False])
@pytest.mark.parametrize("n,d,tau", [(2, 3, 0.1), (5, 8, 0.1), (7, 4, 0.5), (4, 16, 0.05)])
def test_value_and_gradient_match_naive_loop(variant, stop_gradient, n, d, tau):
    z1, z2 = random_views(n, d, seed=n * 100 + d)
    ours_in = [z.clone().requires_grad_(True) for z in (z1, z2)]
    ref_in = [z.clone().requires_grad_(True) for z in (z1, z2)]
    # float64 inputs are computed in float64 (no silent downcast), so the match is to float64 precision.
    ours = InvaSpreadLoss(tau, variant, stop_gradient)(*ours_in)
    ref = NAIVE[variant](*ref_in, tau, stop_gradient)
    ours.backward()
    ref.backward()
    assert ours.dtype == torch.float64
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-10)
    for a, b in zip(ours_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-10)
    # float32 inputs: float32 result within float32 tolerance of the float64 loop
    ours32 = InvaSpreadLoss(tau, variant, stop_gradient)(z1.float(), z2.float())
    assert ours32.dtype == torch.float32
    assert ours32.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("variant", ["reference", "paper"])
def test_gradcheck(variant):
    # gradcheck needs float64 end to end (the module keeps float64 inputs in float64). Only the
    # full gradient is a true derivative: with stop_gradient the finite differences also move the
    # detached keys, which is exactly what the option ignores (checked against the loop above).
    z1, z2 = random_views(4, 5, seed=3)
    loss = InvaSpreadLoss(0.2, variant, stop_gradient=False)
    assert torch.autograd.gradcheck(loss, (z1.requires_grad_(), z2.requires_grad_()))


@pytest.mark.parametrize("variant", ["reference", "paper"])
def test_permutation_invariance_over_instances(variant):
    z1, z2 = random_views(9, 6, seed=11, dtype=torch.float32)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    loss = InvaSpreadLoss(0.1, variant)
    assert loss(z1, z2).item() == pytest.approx(loss(z1[perm], z2[perm]).item(), rel=1e-5)


def test_reference_is_symmetric_in_the_two_views():
    z1, z2 = random_views(6, 10, seed=5, dtype=torch.float32)
    loss = InvaSpreadLoss(0.1, "reference")
    assert loss(z1, z2).item() == pytest.approx(loss(z2, z1).item(), rel=1e-6)


def test_paper_variant_is_not_symmetric():
    # Eq. 4 only uses the original branch, so swapping the branches changes the value.
    z1, z2 = random_views(6, 10, seed=5, dtype=torch.float32)
    loss = InvaSpreadLoss(0.1, "paper")
    assert abs(loss(z1, z2).item() - loss(z2, z1).item()) > 1e-4


@pytest.mark.parametrize("variant", ["reference", "paper"])
def test_aligned_spread_views_give_lower_loss_than_collapsed(variant):
    n, d = 8, 16
    spread = torch.eye(n, d)
    collapsed = F.normalize(torch.ones(n, d) + 0.01 * torch.randn(n, d), dim=1)
    loss = InvaSpreadLoss(0.1, variant)
    assert loss(spread, spread) < loss(collapsed, collapsed)


@pytest.mark.parametrize("variant", ["reference", "paper"])
@pytest.mark.parametrize("stop_gradient", [True, False])
def test_stable_at_low_temperature_and_extreme_similarities(variant, stop_gradient):
    # One negative equal to the anchor, the positive orthogonal: Q -> 1 at tau = 0.01 in float32.
    d = 4
    z1 = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0]]).requires_grad_()
    z2 = torch.tensor([[0, 1.0, 0, 0], [0, 0, 0, 1.0], [0, 1.0, 0, 0]]).requires_grad_()
    loss = InvaSpreadLoss(0.01, variant, stop_gradient)(z1, z2)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    # and it agrees with the float64 loop where the float64 loop itself is finite
    ref = NAIVE[variant](z1.detach().double(), z2.detach().double(), 0.01, stop_gradient)
    if math.isfinite(ref.item()):
        assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    del d


@pytest.mark.parametrize("variant", ["reference", "paper"])
def test_bf16_autocast_gives_finite_float32_loss(variant):
    z1, z2 = random_views(16, 32, seed=1, dtype=torch.float32)
    z1 = z1.bfloat16().requires_grad_()
    z2 = z2.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = InvaSpreadLoss(0.01, variant)(z1, z2)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(z1.grad.float()).all() and torch.isfinite(z2.grad.float()).all()


def test_single_instance_is_a_clear_error():
    z = F.normalize(torch.randn(1, 8), dim=1)
    with pytest.raises(ValueError, match="at least 2 instances"):
        InvaSpreadLoss()(z, z)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="variant"):
        InvaSpreadLoss(variant="memory_bank")
    with pytest.raises(ValueError, match="temperature"):
        InvaSpreadLoss(temperature=0.0)
    with pytest.raises(ValueError, match="equal shape"):
        InvaSpreadLoss()(torch.randn(4, 8), torch.randn(3, 8))


def test_stop_gradient_reaches_features_only_as_anchors():
    # With keys detached, d loss / d x_a equals the naive loop with detached keys (covered above) and
    # differs from the full gradient: the option really changes the gradient.
    z1, z2 = random_views(5, 6, seed=2, dtype=torch.float32)
    grads = []
    for sg in (True, False):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        InvaSpreadLoss(0.1, "reference", sg)(a, b).backward()
        grads.append(a.grad)
    assert not torch.allclose(grads[0], grads[1], atol=1e-4)


def test_log_one_minus_softmax_matches_float64_direct_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 9, generator=g, dtype=torch.float64) * 3
    logits[0, 2] = float("-inf")
    direct = torch.log1p(-torch.softmax(logits, dim=1))
    torch.testing.assert_close(log_one_minus_softmax(logits), direct)
    # extreme row: one entry dominates by 200 nats; the float32 direct formula gives -inf there
    extreme = torch.tensor([[200.0, 0.0, -1.0]])
    out = log_one_minus_softmax(extreme)
    assert torch.isfinite(out).all()
    expected0 = math.log(math.exp(0.0) + math.exp(-1.0)) - 200.0
    assert out[0, 0].item() == pytest.approx(expected0, rel=1e-6)


def naive_sampled_reference(z1, z2, tau, keep_hard, fraction):
    """Table 8's sampling: per anchor keep the m most (hard) or least (easy) similar negatives."""
    n = z1.shape[0]
    x = torch.cat([z1, z2])
    key = x.detach()
    m = max(1, round(fraction * (2 * n - 2)))
    total = 0.0
    for a in range(2 * n):
        p = a + n if a < n else a - n
        s = [torch.dot(x[a], key[k]) / tau for k in range(2 * n)]
        negatives = sorted((j for j in range(2 * n) if j not in (a, p)), key=lambda j: s[j].item(),
                           reverse=keep_hard)[:m]
        z = torch.exp(s[p]) + sum(torch.exp(s[j]) for j in negatives)
        total = total + torch.log(torch.exp(s[p]) / z)
        for j in negatives:
            total = total + torch.log(1 - torch.exp(s[j]) / z)
    return -total / (2 * n)


@pytest.mark.parametrize("negatives", ["hard", "easy"])
@pytest.mark.parametrize("n,fraction", [(4, 0.5), (6, 0.5), (5, 0.25), (3, 1.0)])
def test_hard_and_easy_negatives_match_naive_loop(negatives, n, fraction):
    z1, z2 = random_views(n, 8, seed=n)
    ours_in = [z.clone().requires_grad_(True) for z in (z1, z2)]
    ref_in = [z.clone().requires_grad_(True) for z in (z1, z2)]
    ours = InvaSpreadLoss(0.1, "reference", True, negatives=negatives, negative_fraction=fraction)(*ours_in)
    ref = naive_sampled_reference(*ref_in, 0.1, negatives == "hard", fraction)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)
    for a, b in zip(ours_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def naive_released_hard(z1, z2, tau, neg_m):
    """The released code's first-commit BatchCriterion, negM < 1 branch, one scalar at a time: exp scores with
    detached keys, per anchor the int(2 N negM) largest negatives kept, the negative log terms weighted by negM,
    the sum divided by (kept + 1)."""
    n = z1.shape[0]
    x = torch.cat([z1, z2])
    key = x.detach()
    neg_num = int(2 * n * neg_m)
    log_pos, log_neg = 0.0, 0.0
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        e = {k: torch.exp(torch.dot(key[k], x[a]) / tau) for k in range(2 * n) if k != a}
        kept = sorted((j for j in e if j != p), key=lambda j: e[j].item(), reverse=True)[:neg_num]
        div = e[p] + sum(e[j] for j in kept)
        log_pos = log_pos + torch.log(e[p] / div)
        for j in kept:
            log_neg = log_neg + torch.log(1 - e[j] / div)
    return -(log_pos + neg_m * log_neg) / (neg_num + 1)


@pytest.mark.parametrize("n,fraction", [(4, 0.5), (6, 0.5), (5, 0.3)])
def test_released_hard_negatives_match_the_released_criterion(n, fraction):
    z1, z2 = random_views(n, 8, seed=n + 1)
    ours_in = [z.clone().requires_grad_(True) for z in (z1, z2)]
    ref_in = [z.clone().requires_grad_(True) for z in (z1, z2)]
    ours = InvaSpreadLoss(0.1, "reference", True, negatives="released", negative_fraction=fraction)(*ours_in)
    ref = naive_released_hard(*ref_in, 0.1, fraction)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    for a, b in zip(ours_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_all_negatives_equals_fraction_one():
    z1, z2 = random_views(5, 8, seed=9, dtype=torch.float32)
    full = InvaSpreadLoss(0.1)(z1, z2)
    assert InvaSpreadLoss(0.1, negatives="hard", negative_fraction=1.0)(z1, z2).item() == pytest.approx(full.item())
    with pytest.raises(ValueError, match="reference"):
        InvaSpreadLoss(variant="paper", negatives="hard")
