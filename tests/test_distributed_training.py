"""``torchrun --nproc_per_node=2 -m invaspread train`` on the CPU (gloo): one metrics line per epoch and one
checkpoint (rank 0 writes), a resumed 2-process run equal to an uninterrupted one, and memory banks bitwise
equal on both ranks."""

import json
import subprocess
import sys

import pytest
import torch

from invaspread.engine.checkpoint import load_checkpoint

TINY = ["data.subset_per_class=20", "data.num_workers=0", "model.width=8", "model.embedding_dim=16",
        "train.batch_size=32", "train.progress=false", "eval.knn_k=10", "optim.schedule=constant"]


def torchrun(*args, script=None):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [script] if script else ["-m", "invaspread"]
    done = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def sets(*extra):
    return sum((["--set", s] for s in TINY + list(extra)), [])


def test_two_process_run_writes_once_and_resumes_exactly(tmp_path):
    cut, full = tmp_path / "cut", tmp_path / "full"
    out = torchrun("train", "--out", cut, "--epochs", 1, *sets())
    assert out.stdout.count("epoch=1 ") == 1, "rank 0 alone prints"
    lines = [json.loads(ln) for ln in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [0, 1], "one metrics line per epoch, not one per rank"
    assert sorted(p.name for p in cut.glob("*.pt")) == ["last.pt"]
    torchrun("train", "--resume", cut, "--epochs", 2)
    torchrun("train", "--out", full, "--epochs", 2, *sets())
    a, b = load_checkpoint(cut), load_checkpoint(full)
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["metrics"]["loss"] == b["metrics"]["loss"] and a["metrics"]["knn_top1"] == b["metrics"]["knn_top1"]


SPY = '''
import os, sys, torch
import invaspread.engine.trainer as trainer
from invaspread.config import load_config
from invaspread.engine.checkpoint import method_checkpoint_state
seen = {}
real = trainer.train_step
def spy(method, *args, **kwargs):
    seen["method"] = method
    return real(method, *args, **kwargs)
trainer.train_step = spy
out = sys.argv[1]
trainer.fit(load_config(None, sys.argv[2:]), out, log=lambda s: None)
own = method_checkpoint_state(seen["method"])
torch.save({k: v.clone() for k, v in own.items()}, f"{out}-state{os.environ['RANK']}.pt")
'''


@pytest.mark.parametrize("name, extra", [("npsoftmax", ()), ("deepcluster", ("method.deepcluster.clusters=5",)),
                                         ("mom", ("method.mom.graph_neighbours=5", "method.mom.positive_k=5",
                                                  "method.mom.negative_k=10", "method.mom.pool_size=5")),
                                         ("mocov2", ("method.mocov2.queue=64", "model.head_hidden=32")),
                                         ("byol", ("model.head_hidden=32", "method.byol.predictor_hidden=32"))])
def test_banks_clusters_and_mined_pools_are_bitwise_equal_on_both_ranks(name, extra, tmp_path):
    """NPSoftmax's bank (updated with both ranks' rows), DeepCluster's pseudo-labels and classifier, MOM's pools,
    MoCo's queue (both ranks' keys) and key encoder, BYOL's target: the same on both ranks, and what rank 0 saved."""
    script = tmp_path / "spy.py"
    script.write_text(SPY)
    run = tmp_path / name
    torchrun(run, *TINY, "train.epochs=1", f"method.name={name}", *extra, script=script)
    rank0, rank1 = (torch.load(f"{run}-state{r}.pt") for r in (0, 1))
    saved = load_checkpoint(run)["method"]
    assert rank0.keys() == rank1.keys() == saved.keys() and rank0
    for key in rank0:
        # a momentum copy's BatchNorm statistics follow its rank's images, as the encoder's own do (rank 0's are
        # saved; model.sync_bn shares them): everything else is the same on both ranks
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], saved[key]), key
