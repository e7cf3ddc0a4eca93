"""Run-folder safety (issue 11, items 2-4): one training per folder (two real processes), foreign folders and
files never written over, a copied-in checkpoint refused, interrupted history kept aside, unique temp files."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from invaspread.cli import main
from invaspread.config import ConfigError, InvaspreadError, load_config
from invaspread.engine import checkpoint as checkpoint_module
from invaspread.engine.checkpoint import load_checkpoint, save_checkpoint
from invaspread.engine.run_folder import LOCK, MARKER
from invaspread.engine.trainer import fit

TINY = ["data.subset_per_class=20", "data.num_workers=0", "model.width=8", "model.embedding_dim=16",
        "train.batch_size=32", "train.progress=false", "eval.knn_k=10", "optim.schedule=cosine"]


def tiny(epochs=1, seed=0):
    return load_config(None, TINY + [f"train.epochs={epochs}", f"train.seed={seed}"])


def epochs_logged(run):
    return [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_second_training_into_a_busy_folder_is_refused_naming_the_holder(tmp_path):
    """Two real processes, one --out: the second exits with one line naming the first's pid; the first's
    config, metrics and checkpoint are its own alone."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "invaspread", "train", "--out", str(run)]
    sets = sum((["--set", s] for s in TINY), [])
    first = subprocess.Popen(command + sets + ["--epochs", "6", "--set", "train.seed=1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((run / LOCK).exists() and "pid" in (run / LOCK).read_text()):
        assert first.poll() is None, first.communicate()
        assert time.time() < deadline
        time.sleep(0.2)
    second = subprocess.run(command + sets + ["--epochs", "6", "--set", "train.seed=2"], capture_output=True,
                            text=True, timeout=300)
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    assert second.returncode != 0
    message = second.stderr.strip().splitlines()
    assert len(message) == 1 and f"pid {first.pid}" in message[0] and "in use" in message[0], second.stderr
    assert epochs_logged(run) == list(range(7))
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 1
    assert load_checkpoint(run)["config"]["train"]["seed"] == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_lock_left_by_a_dead_process_is_no_obstacle(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text(json.dumps({"run_id": "x"}))
    (run / LOCK).write_text("pid 999999 on a-machine-that-crashed\n")      # nobody holds the flock
    fit(tiny(), run, log=lambda s: None)
    assert epochs_logged(run) == [0, 1]


def test_a_foreign_non_empty_folder_is_refused_and_its_files_never_overwritten(tmp_path, capsys):
    theirs = tmp_path / "project"
    theirs.mkdir()
    (theirs / "config.yaml").write_text("my: own config\n")
    (theirs / "notes.txt").write_text("keep me\n")
    with pytest.raises(ConfigError, match="not an invaspread run"):
        fit(tiny(), theirs, log=lambda s: None)
    with pytest.raises(ConfigError, match="config.yaml that no invaspread run wrote"):
        fit(tiny(), theirs, log=lambda s: None, use_existing_folder=True)
    assert (theirs / "config.yaml").read_text() == "my: own config\n"
    (theirs / "config.yaml").unlink()
    assert main(["train", "--out", str(theirs), "--epochs", "1", "--use-existing-folder"]
                + sum((["--set", s] for s in TINY), [])) == 0
    assert (theirs / "notes.txt").read_text() == "keep me\n" and (theirs / "last.pt").exists()


def test_a_run_stopped_before_its_first_checkpoint_can_be_started_again_keeping_its_lines(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text(json.dumps({"run_id": "earlier"}))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "knn_top1": 12.0}) + "\n")
    fit(tiny(), run, log=lambda s: None)
    assert epochs_logged(run) == [0, 1]
    aside = (run / "metrics.interrupted.jsonl").read_text()
    assert '"knn_top1": 12.0' in aside


def test_a_checkpoint_copied_from_another_run_is_refused_and_nothing_is_rewritten(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    fit(tiny(epochs=1, seed=1), a, log=lambda s: None)
    fit(tiny(epochs=2, seed=2), b, log=lambda s: None)
    before = {name: (a / name).read_bytes() for name in ("config.yaml", "metrics.jsonl")}
    shutil.copy(b / "last.pt", a / "last.pt")
    with pytest.raises(InvaspreadError, match="copied in"):
        fit(None, a, resume=True, log=lambda s: None)
    for name, content in before.items():
        assert (a / name).read_bytes() == content, name


def test_resume_sets_aside_the_lines_of_an_uncheckpointed_epoch_and_a_half_written_line(tmp_path):
    run = tmp_path / "run"
    fit(tiny(epochs=1), run, log=lambda s: None)
    state = load_checkpoint(run)
    state["config"]["train"]["epochs"] = 2
    save_checkpoint(state, run / "last.pt")                   # as if the run had been started for 2 epochs
    (run / "config.yaml").write_text(yaml.safe_dump(state["config"], sort_keys=False))
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"epoch": 2, "loss": 9.9}) + "\n" + '{"epoch": 3, "lo')
    fit(None, run, resume=True, log=lambda s: None)
    assert epochs_logged(run) == [0, 1, 2]
    aside = (run / "metrics.interrupted.jsonl").read_text()
    assert '"loss": 9.9' in aside and '{"epoch": 3, "lo' in aside and "resumed after epoch 1" in aside


def test_checkpoint_temp_files_are_unique_and_removed_when_writing_fails(tmp_path, monkeypatch):
    save_checkpoint({"model": {}, "config": {}, "epoch": 1}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    (tmp_path / "last.pt.tmp").symlink_to(tmp_path / "victim")       # a planted link at the old fixed name
    seen = []

    def failing_save(obj, fh):
        seen.append(fh.name)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError):
        save_checkpoint({"model": {}, "config": {}, "epoch": 2}, tmp_path / "last.pt")
    assert not (tmp_path / "victim").exists() and not os.path.exists(seen[0])
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1, "the previous checkpoint is intact"


def resume(run, *args):
    return main(["train", "--resume", str(run), *args])


def test_resume_accepts_the_safe_overrides_records_them_and_refuses_the_rest(tmp_path, capsys):
    run = tmp_path / "run"
    fit(tiny(epochs=1), run, log=lambda s: None)
    assert resume(run, "--set", "model.width=16") == 2
    assert "model.width cannot change when a run is resumed" in capsys.readouterr().err
    assert resume(run, "--out", str(tmp_path / "elsewhere")) == 2
    assert "drop --out" in capsys.readouterr().err
    assert resume(run, "--epochs", "1") == 2
    assert "done 1 epochs already" in capsys.readouterr().err
    # a finished run is extended, with a lower lr, and both changes are recorded (in the order given)
    assert resume(run, "--epochs", "2", "--set", "optim.lr=0.003") == 0
    assert epochs_logged(run) == [0, 1, 2]
    record = json.loads((run / "overrides.jsonl").read_text())
    assert record["resumed_after_epoch"] == 1 and record["overrides"] == ["optim.lr=0.003", "train.epochs=2"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["optim"]["lr"] == 0.003
    assert load_checkpoint(run)["config"]["optim"]["lr"] == 0.003


def test_resume_refuses_a_config_yaml_edited_by_hand(tmp_path):
    run = tmp_path / "run"
    fit(tiny(epochs=1), run, log=lambda s: None)
    text = (run / "config.yaml").read_text().replace("width: 8", "width: 32")
    (run / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"was edited \(model.width\)"):
        fit(None, run, resume=True, log=lambda s: None)


def test_a_diverged_run_resumes_from_its_last_finite_epoch_with_the_advised_lower_lr(tmp_path, monkeypatch):
    """Epoch 1 trains at a sane lr, epoch 2 blows up: the message's command continues the run."""
    import invaspread.engine.trainer as trainer

    run = tmp_path / "run"
    real = trainer.learning_rate
    monkeypatch.setattr(trainer, "learning_rate", lambda cfg, epochs, progress: 1e6 if progress >= 1 else 0.03)
    with pytest.raises(InvaspreadError, match="became NaN or infinite") as info:
        fit(tiny(epochs=2), run, log=lambda s: None)
    monkeypatch.setattr(trainer, "learning_rate", real)
    message = str(info.value)
    assert f"invaspread train --resume {run} --set optim.lr=" in message
    advised = message.split("--set ")[-1].split()[0]
    assert resume(run, "--set", advised) == 0
    assert epochs_logged(run) == [0, 1, 2] and load_checkpoint(run)["epoch"] == 2


def test_keep_and_save_epochs_leave_earlier_checkpoints_to_go_back_to(tmp_path):
    """train.keep=2 keeps the last two epochs' checkpoints (a collapse at the end leaves good ones), and
    train.save_epochs keeps chosen ones for good; each loads and equals what last.pt held then."""
    run = tmp_path / "run"
    fit(load_config(None, TINY + ["train.epochs=4", "train.keep=2", "train.save_epochs=[1]"]), run, log=lambda s: None)
    assert sorted(p.name for p in run.glob("epoch-*.pt")) == ["epoch-0001.pt", "epoch-0003.pt", "epoch-0004.pt"]
    assert [load_checkpoint(run / f"epoch-{e:04d}.pt")["epoch"] for e in (1, 3, 4)] == [1, 3, 4]
    last = load_checkpoint(run)
    kept = load_checkpoint(run / "epoch-0004.pt")
    assert all((last["model"][k] == kept["model"][k]).all() for k in last["model"])
    with pytest.raises(ConfigError, match="train.keep=-1"):
        load_config(None, ["train.keep=-1"])


def _resume_stopped_before_its_first_step(run, monkeypatch):
    """A one-epoch run, then a resume to 2 epochs stopped (Ctrl-C) in its first training step: last.pt and
    config.yaml were both rewritten with train.epochs=2, no epoch was added."""
    import invaspread.engine.trainer as trainer

    fit(tiny(epochs=1), run, log=lambda s: None)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(None, run, resume=True, overrides=["train.epochs=2"], log=lambda s: None)
    monkeypatch.undo()


def test_a_resume_with_overrides_interrupted_before_its_first_epoch_can_resume_again(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _resume_stopped_before_its_first_step(run, monkeypatch)
    fit(None, run, resume=True, log=lambda s: None)             # config.yaml and last.pt agree: no "edited"
    assert epochs_logged(run) == [0, 1, 2]


def test_a_config_write_cut_before_it_completes_leaves_the_old_file_whole(tmp_path, monkeypatch):
    """config.yaml goes through the atomic writer: cut at the last moment (the rename), the old file is untouched
    and no temporary file stays (a plain write would have replaced the old one already)."""
    from invaspread import atomic
    from invaspread.config import save_config

    path = tmp_path / "config.yaml"
    save_config(load_config(None, ["train.epochs=3"]), path)
    before = path.read_bytes()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_config(load_config(None, ["train.epochs=7"]), path)
    assert path.read_bytes() == before and yaml.safe_load(before)["train"]["epochs"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def _cut_at_config_yaml(monkeypatch):
    """A kill between last.pt's write and config.yaml's rename (issue 28, 3): the resume's changed config is in
    last.pt, config.yaml still holds the one before."""
    from invaspread import atomic

    real = atomic.os.replace

    def cut(source, target):
        if str(target).endswith("config.yaml"):
            raise KeyboardInterrupt
        real(source, target)

    monkeypatch.setattr(atomic.os, "replace", cut)


def test_a_resume_cut_between_last_pt_and_config_yaml_is_not_taken_for_an_edit(tmp_path, monkeypatch):
    run = tmp_path / "run"
    fit(tiny(epochs=1), run, log=lambda s: None)
    _cut_at_config_yaml(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        fit(None, run, resume=True, overrides=["train.epochs=2"], log=lambda s: None)
    with pytest.raises(KeyboardInterrupt):   # cut again, now with a change of its own: both still known
        fit(None, run, resume=True, overrides=["optim.lr=0.003"], log=lambda s: None)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 1   # the older config stayed
    monkeypatch.undo()
    said = []
    fit(None, run, resume=True, log=said.append)
    assert epochs_logged(run) == [0, 1, 2]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["optim"]["lr"] == 0.003
    records = [json.loads(line) for line in (run / "overrides.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["resumed_after_epoch"] == 1
    assert sorted(records[0]["overrides"]) == ["optim.lr=0.003", "train.epochs=2"]
    assert any("resumed with" in line and "train.epochs=2" in line for line in said)
    assert "config_before_resume" not in load_checkpoint(run)   # the first epoch's checkpoint drops it


def test_an_edit_after_a_resume_that_wrote_config_yaml_is_still_refused(tmp_path, monkeypatch):
    """The older config a resume keeps in last.pt until its first epoch forgives only a cut before config.yaml:
    once config.yaml was rewritten (here the resume is stopped before its first step), an edit is refused. (A hand
    edit that writes back exactly the older config cannot be told from the cut: last.pt's config wins, and the
    resume says "resumed with ..." and records it.)"""
    run = tmp_path / "run"
    _resume_stopped_before_its_first_step(run, monkeypatch)
    assert "config_before_resume" in load_checkpoint(run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("width: 8", "width: 32"))
    with pytest.raises(ConfigError, match=r"was edited \(model.width\)"):
        fit(None, run, resume=True, log=lambda s: None)
