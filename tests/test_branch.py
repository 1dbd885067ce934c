"""Trunk-and-cooldown sweeps: each budget's branch trains exactly what a separate WSD run of that budget trains
(bit-identical losses, the learning rates of its own schedule), the trunk is trained once, and compute_tokens adds
up to what the sweep really trained."""
import csv
import json
import subprocess
import sys

import pytest

from conftest import ROOT, sigterm_at
from jaxscale.branch import plan_branches, steps_of, worker_share
from jaxscale.config import ConfigError, expand

CONFIG = """
[data]
seq_len = 16
[tokenizer]
vocab_size = 256
[model]
d_model = 16
d_mlp = 32
n_layers = 1
[train]
batch_size = 8
tokens = [1280, 2560, 5120]  # 10, 20 and 40 steps of 128 tokens
schedule = "wsd"
cooldown_frac = 0.25
warmup_frac = 0.0
eval_tokens = 256
[energy]
meter = "none"
[checkpoint]
every = 0
"""


def sweep(tmp_path, name, *overrides):
    config = tmp_path / f"{name}.toml"
    config.write_text(CONFIG)
    out = tmp_path / name
    proc = subprocess.run([sys.executable, "-m", "jaxscale.train", "--config", str(config), "--out", str(out), "--quiet",
                           *overrides], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "results.csv") as f:
        return out, {row["tokens"]: row for row in csv.DictReader(f)}, proc.stderr


def records(out, row):
    return [json.loads(line) for line in (out / row["run_id"] / "metrics.jsonl").read_text().splitlines()]


def test_branches_train_what_separate_wsd_runs_train(tmp_path):
    separate_out, separate, _ = sweep(tmp_path, "separate")
    branched_out, branched, log = sweep(tmp_path, "branched", "sweep.branch=true")
    assert set(branched) == set(separate) == {"1280", "2560", "5120"}
    for tokens in separate:
        ours, theirs = records(branched_out, branched[tokens]), records(separate_out, separate[tokens])
        assert [r["loss"] for r in ours] == [r["loss"] for r in theirs]  # bit-identical, step by step
        assert [r["lr"] for r in ours] == [r["lr"] for r in theirs]
        assert branched[tokens]["eval_loss"] == separate[tokens]["eval_loss"]
    # the largest budget trained the trunk: branches start at their cooldown (10 - 3 = 7, 20 - 5 = 15 steps)
    assert "branching off 002-tokens5120 at step 7 of 10" in log and "at step 15 of 20" in log
    compute = {t: int(row["compute_tokens"]) for t, row in branched.items()}
    assert compute == {"1280": 3 * 128, "2560": 5 * 128, "5120": 5120}
    assert sum(compute.values()) == 5120 + 8 * 128 < sum(map(int, separate))  # 6,144 against 8,960 trained
    assert {int(row["compute_tokens"]) for row in separate.values()} == {1280, 2560, 5120}
    assert sorted(p.name for p in (branched_out / "trunks" / "002-tokens5120").iterdir() if p.name.isdigit()) == \
        ["15", "7"]


def test_a_worker_with_branches_only_waits_for_the_other_workers_trunk(tmp_path):
    """One group, two workers: the trunk (40 steps) is worker 0's, both branches worker 1's, which waits for the
    trunk's checkpoints; every run is trained once, to the losses of one process training the whole sweep."""
    _, alone, _ = sweep(tmp_path, "alone", "sweep.branch=true")
    config, out = tmp_path / "alone.toml", tmp_path / "two"
    procs = [subprocess.Popen([sys.executable, "-m", "jaxscale.train", "--config", str(config), "--out", str(out),
                               "--worker", f"{i}/2", "sweep.branch=true"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    logs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [log[-2000:] for log in logs]
    trained = [sorted(line.split()[2] for line in log.splitlines() if line.startswith("run ")) for log in logs]
    assert trained == [["002-tokens5120"], ["000-tokens1280", "001-tokens2560"]]
    with open(out / "results.csv") as f:
        rows = {row["tokens"]: row for row in csv.DictReader(f)}
    assert {t: r["eval_loss"] for t, r in rows.items()} == {t: r["eval_loss"] for t, r in alone.items()}


def test_a_trunk_whose_worker_never_comes_is_trained_after_the_grace_period(tmp_path):
    """Worker 1/2 alone (worker 0's SLURM task never started): its branches wait TRUNK_GRACE_S (1 s here) for the
    trunk of worker 0's share, then train it themselves; the sweep does not hang."""
    config, out = tmp_path / "lonely.toml", tmp_path / "lonely"
    config.write_text(CONFIG)
    code = ("import sys; import jaxscale.train as t; t.TRUNK_GRACE_S = 1.0; "
            f"sys.exit(t.main(['--config', {str(config)!r}, '--out', {str(out)!r}, '--worker', '1/2', "
            "'sweep.branch=true']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = sorted(line.split()[2] for line in proc.stderr.splitlines() if line.startswith("run "))
    assert trained == ["000-tokens1280", "001-tokens2560", "002-tokens5120"]  # its two branches and the trunk


def test_a_worker_helping_others_trains_their_branches_once_its_trunk_is_saved(tmp_path):
    """Worker 0/2 alone with --help-others: its share is the trunk; the branches (worker 1's) can start only
    from the trunk's checkpoints, so they are helped with after it, to the losses of one process training all."""
    _, alone, _ = sweep(tmp_path, "alone", "sweep.branch=true")
    out, helped, log = sweep(tmp_path, "helped", "sweep.branch=true", "--worker", "0/2", "--help-others")
    trained = [line.split()[2] for line in log.splitlines() if line.startswith("run ")]
    assert trained == ["002-tokens5120", "001-tokens2560", "000-tokens1280"]  # the trunk, then the last first
    assert {t: r["eval_loss"] for t, r in helped.items()} == {t: r["eval_loss"] for t, r in alone.items()}


def test_a_stop_at_a_branch_point_still_saves_it(tmp_path, monkeypatch, capsys):
    """The trunk (40 steps) passes the 1280-token budget's cooldown start at step 7: a SIGTERM recorded there stops
    the trunk after saving that point, so the branch can start from it when the sweep resumes."""
    from jaxscale.train import main

    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config), "--out", str(tmp_path / "out"), "--quiet", "sweep.branch=true"]
    sigterm_at(monkeypatch, 7, 40)
    assert main(args) == 143
    assert "SIGTERM at step 7/40" in capsys.readouterr().err
    assert main(args) == 0
    with open(tmp_path / "out" / "results.csv") as f:
        rows = {row["tokens"]: row for row in csv.DictReader(f)}
    assert {t: (r["status"], r["branched_at_step"]) for t, r in rows.items()} == {
        "1280": ("ok", "7"), "2560": ("ok", "15"), "5120": ("ok", "")}


def test_a_rerun_trains_nothing_again(tmp_path):
    out, first, _ = sweep(tmp_path, "again", "sweep.branch=true")
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.jsonl")}
    _, second, log = sweep(tmp_path, "again", "sweep.branch=true")
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.jsonl")} == before and "branching" not in log


def test_branch_plan_and_its_rules():
    raw = {"name": "x", "data": {"seq_len": 16}, "train": {"tokens": [1280, 5120], "batch_size": 8, "schedule": "wsd",
           "warmup_frac": 0.1, "cooldown_frac": 0.2}, "sweep": {"branch": True}}  # fmt: skip
    plans = plan_branches(expand(raw), ROOT)
    small, large = (plans[r.run_id] for r in expand(raw))
    assert large.is_trunk and large.points == (8,) and small.start == 8  # 10 steps, cooldown ceil(2.0) = 2
    assert small.warmup_steps == large.warmup_steps == 1  # ceil(0.1 x the smallest run's 10 steps)
    fixed = plan_branches(expand({**raw, "train": {**raw["train"], "warmup_steps": 3}}), ROOT)
    assert {p.warmup_steps for p in fixed.values()} == {3}  # what each run would have had alone
    with pytest.raises(ConfigError, match="sweep.branch: needs train.schedule = 'wsd'"):
        expand({**raw, "train": {**raw["train"], "schedule": "cosine"}})


def test_workers_get_whole_groups_balanced_by_compute():
    """Every N-th run gave worker 1 every trunk whenever N divides the number of budgets. Three shapes x 4 budgets
    of 10, 20, 30, 40 steps, cooldown 25%: each trunk trains 40 steps and its branches 3, 5 and 8 (ceil(0.25 x 10,
    20, 30) cooldown steps), 56 steps a group; at 16, 32 and 48 FLOPs a step (d_model, here) the groups weigh 896,
    1,792 and 2,688, so d48 goes to one worker and d16 with d32 to the other: 2,688 each."""
    raw = {"name": "x", "data": {"seq_len": 16}, "model": [{"d_model": d} for d in (16, 32, 48)],
           "train": {"tokens": [1280, 2560, 3840, 5120], "batch_size": 8, "schedule": "wsd", "warmup_frac": 0.0,
                     "cooldown_frac": 0.25}, "sweep": {"branch": True}}  # fmt: skip
    runs = expand(raw)
    branches = plan_branches(runs, ROOT)
    flops = lambda spec: spec.config.model.d_model  # noqa: E731
    shares = [worker_share(runs, branches, (i, 2), flops) for i in range(2)]
    widths = [{r.config.model.d_model for r in share} for share in shares]
    assert widths == [{48}, {16, 32}] and [len(s) for s in shares] == [4, 8]
    assert [r.run_id for r in shares[1]] == [r.run_id for r in runs if r.config.model.d_model != 48]  # sweep order
    assert sorted(r.run_id for r in worker_share(runs, branches, (0, 1), flops)) == sorted(r.run_id for r in runs)


def test_plain_runs_are_dealt_by_compute_and_equal_ones_every_nth():
    """No branches: the tiny grid's order (each model's budgets in turn) dealt every N-th gives one of 4 workers
    every largest budget. Two shapes (16 and 32 FLOPs a step) x 10, 20, 30, 40 steps weigh 160, 320, 480, 640 and
    320, 640, 960, 1,280; every 4th run would load the workers 480, 960, 1,440, 1,920. Dealt heaviest first (ties in
    sweep order) to the least loaded (ties to the lowest index): 1,280 | 960 | 640 | 640, then 480 to worker 2,
    320 (d16) to 3, 320 (d32) to 1, 160 to 3: loads 1,280, 1,280, 1,120, 1,120."""
    raw = {"name": "x", "data": {"seq_len": 16}, "model": [{"d_model": d} for d in (16, 32)],
           "train": {"tokens": [1280, 2560, 3840, 5120], "batch_size": 8}}  # fmt: skip
    runs = expand(raw)
    flops = lambda spec: spec.config.model.d_model  # noqa: E731
    weights = [sorted(steps_of(r) * flops(r) for r in worker_share(runs, {}, (i, 4), flops)) for i in range(4)]
    assert weights == [[1280], [320, 960], [480, 640], [160, 320, 640]]
    repeated = expand({**raw, "model": {"d_model": 16}, "train": {**raw["train"], "tokens": 1280},
                       "sweep": {"repetitions": 5}})
    assert [worker_share(repeated, {}, (i, 2), flops) for i in range(2)] == [repeated[0::2], repeated[1::2]]


def test_more_workers_than_groups_split_the_groups():
    """Four workers, three groups: trunks and branches are dealt one by one, heaviest first, so the three trunks
    (40 steps x 16, 32, 48 = 640, 1,280, 1,920) go to three workers and the fourth gets branches."""
    raw = {"name": "x", "data": {"seq_len": 16}, "model": [{"d_model": d} for d in (16, 32, 48)],
           "train": {"tokens": [1280, 2560, 3840, 5120], "batch_size": 8, "schedule": "wsd", "warmup_frac": 0.0,
                     "cooldown_frac": 0.25}, "sweep": {"branch": True}}  # fmt: skip
    runs = expand(raw)
    branches = plan_branches(runs, ROOT)
    shares = [worker_share(runs, branches, (i, 4), lambda spec: spec.config.model.d_model) for i in range(4)]
    assert all(shares) and sorted(r.run_id for s in shares for r in s) == sorted(r.run_id for r in runs)
    trunks = [[r.config.model.d_model for r in s if branches[r.run_id].is_trunk] for s in shares]
    assert trunks == [[48], [32], [16], []]
