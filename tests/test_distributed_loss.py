"""``InvaSpreadLoss`` / ``TripletLoss`` / ``NTXentLoss(gather_distributed=True)`` in a real process group (gloo, 2 and 3
processes) against the single-process loss on the concatenated batch, in float64: (a) the mean over ranks of
the returned losses equals it, (b) each rank's gradient on its own rows equals world size x its gradient
there -- for both stop-gradient settings, both variants, the negative-sampling modes, hard and random
triplets, and SimCLR's NT-Xent."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from invaspread.losses import InvaSpreadLoss, NTXentLoss, TripletLoss

SETTINGS = [dict(stop_gradient=sg, variant=v, negatives=neg) for sg in (True, False)
            for v, neg in (("reference", "all"), ("paper", "all"), ("reference", "hard"), ("reference", "released"))]
SETTINGS += [dict(triplet=negatives) for negatives in ("hard", "random")] + [dict(ntxent=0.5)]


def make(kwargs, gather):
    if "ntxent" in kwargs:
        return NTXentLoss(kwargs["ntxent"], gather_distributed=gather)
    if "triplet" in kwargs:
        return TripletLoss(0.5, kwargs["triplet"], gather_distributed=gather)
    return InvaSpreadLoss(0.1, gather_distributed=gather, **kwargs)


def draws(kwargs):
    """Random triplet negatives: the same generator on every rank and in the single process."""
    return {"generator": torch.Generator().manual_seed(7)} if kwargs.get("triplet") == "random" else {}


def batch(total, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(total, d, generator=g, dtype=torch.float64), dim=1),
            F.normalize(torch.randn(total, d, generator=g, dtype=torch.float64), dim=1))


def _worker(rank, world, init_file, total, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        z1, z2 = batch(total)
        n = total // world
        out = []
        for kwargs in SETTINGS:
            a = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
            b = z2[rank * n:(rank + 1) * n].clone().requires_grad_(True)
            loss = make(kwargs, gather=True)(a, b, **draws(kwargs))
            loss.backward()
            out.append((loss.item(), a.grad.clone(), b.grad.clone()))
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_gathered_loss_and_gradients_equal_the_single_process_batch(world, tmp_path):
    total = 6 * world
    with mp.Manager() as manager:
        results = manager.dict()
        init_file = tempfile.mktemp(dir=tmp_path)
        mp.spawn(_worker, args=(world, init_file, total, results), nprocs=world, join=True)
        results = dict(results)
    z1, z2 = batch(total)
    n = total // world
    for i, kwargs in enumerate(SETTINGS):
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        single = make(kwargs, gather=False)(a, b, **draws(kwargs))
        single.backward()
        mean = sum(results[r][i][0] for r in range(world)) / world
        assert mean == pytest.approx(single.item(), rel=1e-12), kwargs
        for r in range(world):
            rows = slice(r * n, (r + 1) * n)
            torch.testing.assert_close(results[r][i][1], world * a.grad[rows], rtol=1e-10, atol=1e-12, msg=str(kwargs))
            torch.testing.assert_close(results[r][i][2], world * b.grad[rows], rtol=1e-10, atol=1e-12, msg=str(kwargs))


def test_outside_a_process_group_gathering_changes_nothing():
    z1, z2 = batch(10)
    for kwargs in SETTINGS:
        assert torch.equal(make(kwargs, True)(z1, z2, **draws(kwargs)), make(kwargs, False)(z1, z2, **draws(kwargs)))
    assert os.environ.get("RANK") is None or dist.is_initialized()
