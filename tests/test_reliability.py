"""No bad input or damaged file wedges a sweep, writes outside it, or ends in a traceback (issue 20)."""
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, dead_pid, sigterm_at
from jaxscale import train
from jaxscale.config import ConfigError, expand, load_raw
from jaxscale import sweep as sweeps
from jaxscale.files import write_atomic
from jaxscale.sweep import Sweep

TINY = """
[data]
seq_len = 16
[tokenizer]
vocab_size = 256
[train]
batch_size = 4
tokens = 512
lr = 3e-3
eval_tokens = 64
"""
TWO_MODELS = TINY + """
[[model]]
name = "org/a"
d_model = 16
d_mlp = 32
n_layers = 1
[[model]]
name = "org/b"
d_model = 16
d_mlp = 32
n_layers = 2
"""

PLAIN = TWO_MODELS.replace("org/", "")


def write(tmp_path, text, name="tiny.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def plain_sweep(tmp_path):
    """The two-run PLAIN sweep: its raw config, its runs, and the directory it goes to."""
    raw = load_raw(write(tmp_path, PLAIN))
    return raw, expand(raw), tmp_path / "out"


def cli(config, out, *extra, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "jaxscale.train", "--config", str(config), "--out", str(out),
                           "--quiet", *extra], cwd=cwd, capture_output=True, text=True, timeout=600)


def one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- 2. names -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ['"../../x"', '"/tmp/abs"', '["a", "b"]', '".hidden"', '"a/b"', '""', '".."', "3"])
def test_the_sweep_name_must_be_one_safe_path_component(tmp_path, name):
    with pytest.raises(ConfigError, match=r"^name: .* is not a usable sweep name; allowed: letters"):
        expand(load_raw(write(tmp_path, f"name = {name}\n" + TINY)))


def test_a_config_file_name_that_is_not_a_safe_name_still_gives_one(tmp_path):
    raw = load_raw(write(tmp_path, TINY, name="my sweep (v2).toml"))
    assert raw["name"] == "my_sweep__v2_"
    assert [r.run_id for r in expand(raw)] == ["000-my_sweep__v2_"]


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", "..", ".", "", "x\0y"])
def test_run_path_refuses_whatever_would_leave_the_sweep(tmp_path, name):
    with pytest.raises(ConfigError, match="cannot name a directory inside"):
        sweeps.run_path(tmp_path, name)


def test_model_names_with_a_slash_train_in_sanitised_run_directories(tmp_path):
    out = tmp_path / "out"
    proc = cli(write(tmp_path, TWO_MODELS), out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("00")) == ["000-org_a", "001-org_b"]
    assert json.loads((out / "000-org_a" / "summary.json").read_text())["model"] == "org/a"  # the label is kept


def test_two_models_whose_names_sanitise_alike_are_an_error(tmp_path):
    text = TWO_MODELS.replace('name = "org/b"', 'name = "org_a"')
    with pytest.raises(ConfigError, match="both labelled .org_a.: .* two \\[\\[model\\]\\] names differ only in characters"):
        expand(load_raw(write(tmp_path, text)))


# --- 3. damaged files -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    config, out = write(tmp, PLAIN), tmp / "out"
    assert cli(config, out).returncode == 0
    return config, out


def copy_sweep(finished, tmp_path):
    import shutil
    config, out = finished
    shutil.copytree(out, tmp_path / "out")
    return config, tmp_path / "out"


def test_a_damaged_run_summary_is_set_aside_and_the_run_retrains(finished, tmp_path):
    config, out = copy_sweep(finished, tmp_path)
    (out / "000-a" / "summary.json").write_text('{"run_id": "000-a')
    (out / "001-b" / "summary.json").write_text('{"run_id": "001-b"}')
    proc = cli(config, out)
    assert proc.returncode == 0, proc.stderr
    for run in ("000-a", "001-b"):
        assert f"{out / run / 'summary.json'} is damaged" in proc.stderr
        assert (out / run / "summary.damaged.json").is_file()
        assert json.loads((out / run / "summary.json").read_text())["status"] == "ok"
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",ok," in row for row in rows[1:])


@pytest.mark.parametrize("text", ['{"config": {', "[]", '{"runs": []}'])
def test_a_damaged_sweep_json_is_a_one_line_error_naming_it(finished, tmp_path, text):
    config, out = copy_sweep(finished, tmp_path)
    (out / "sweep.json").write_text(text)
    before = (out / "results.csv").read_bytes()
    one_line_error(cli(config, out), f"{out / 'sweep.json'} is damaged", "restore it", "another --out")
    assert (out / "results.csv").read_bytes() == before


# --- 6. unusable --out ----------------------------------------------------------------------------------------
def test_out_that_is_a_file_or_cannot_be_written_is_exit_2(tmp_path):
    config = write(tmp_path, TINY)
    a_file = tmp_path / "results.txt"
    a_file.write_text("mine")
    # /sys is read-only, also for root (who ignores permission bits)
    for out, words in ((a_file, ["is not a directory"]), ("/proc/jaxscale-test/out", ["cannot write there"]),
                       ("/sys/jaxscale-test", ["cannot write there"])):
        one_line_error(cli(config, out), f"--out {out}", *words)
    assert a_file.read_text() == "mine"


# --- 7. stale claims ------------------------------------------------------------------------------------------
def test_stale_claims_are_taken_over_without_leaving_files(tmp_path):
    raw, runs, out = plain_sweep(tmp_path)
    sweep = Sweep(out, raw, runs)
    for run in runs:  # a worker on this host that died holding each run
        (sweep.claims / f"{run.run_id}.claim").write_text(
            json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "since": 0}))
    assert [sweep.claim(r.run_id) for r in runs] == [True, True]
    assert sorted(p.name for p in sweep.claims.iterdir()) == [f"{r.run_id}.claim" for r in runs]
    (sweep.claims / ".000-a.stale.12345").write_text("{}")  # left by an older version
    Sweep(tmp_path / "out", raw, runs)
    assert not list(sweep.claims.glob(".*"))


def test_a_claim_torn_by_a_kill_is_taken_over_once_it_is_old(tmp_path):
    raw, runs, out = plain_sweep(tmp_path)
    sweep = Sweep(out, raw, runs)
    claims = [sweep.claims / f"{r.run_id}.claim" for r in runs]
    for claim in claims:
        claim.write_text("")  # created, killed before its owner was written
    os.utime(claims[0], (0, 0))
    assert sweep.state(runs[0].run_id) == "pending" and sweep.state(runs[1].run_id) == "running"
    assert sweep.claim(runs[0].run_id) and not sweep.claim(runs[1].run_id)


def test_a_claim_of_a_live_process_here_that_stopped_refreshing_it_goes_stale(tmp_path):
    """A hung worker on this host (or a dead one whose pid another process now has) keeps a live pid: its claim
    goes stale by age, as on any other host."""
    raw, runs, out = plain_sweep(tmp_path)
    sweep = Sweep(out, raw, runs)
    claims = [sweep.claims / f"{r.run_id}.claim" for r in runs]
    for claim in claims:
        claim.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "since": 0}))
    old = time.time() - sweeps.STALE_CLAIM_S - 60
    os.utime(claims[0], (old, old))
    assert sweep.state(runs[0].run_id) == "pending" and sweep.state(runs[1].run_id) == "running"
    assert sweep.claim(runs[0].run_id) and not sweep.claim(runs[1].run_id)


def test_a_fresh_claim_that_replaced_a_stale_one_after_the_look_is_not_taken(tmp_path, monkeypatch):
    """Two workers see the same stale claim; the first takes it over before the second renames it away: the second
    must leave the first's claim in place (else both train the run)."""
    raw, runs, out = plain_sweep(tmp_path)
    sweep = Sweep(out, raw, runs)
    claim = sweep.claims / f"{runs[0].run_id}.claim"
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "since": 0}))
    fresh = json.dumps({"host": "node07", "pid": 4242, "since": time.time()})
    judge = Sweep._stale

    def look_then_lose_the_race(self, path):
        stale = judge(self, path)
        if path == claim and stale and "node07" not in path.read_text():
            claim.unlink()
            claim.write_text(fresh)  # the other worker's takeover, between our look and our rename
        return stale

    monkeypatch.setattr(Sweep, "_stale", look_then_lose_the_race)
    assert not sweep.claim(runs[0].run_id)
    assert claim.read_text() == fresh and not list(sweep.claims.glob(".*"))


def test_a_run_stopped_or_killed_at_its_end_with_a_final_checkpoint_ends_ok(tmp_path, monkeypatch, capsys):
    """A SIGTERM at a run's last step lets it finish (the sweep stops after it); a run whose summary is gone after
    its final checkpoint was saved (a kill between the two, or a retry by deleting summary.json) resumes at its
    last step and ends ok, keeping that checkpoint."""
    config = write(tmp_path, PLAIN)
    out = tmp_path / "out"
    args = ["--config", str(config), "--out", str(out), "--quiet", "checkpoint.final=true", "checkpoint.every=2"]
    sigterm_at(monkeypatch, 8, 8)
    assert train.main(args) == 143
    assert "SIGTERM between runs" in capsys.readouterr().err
    assert train.main(args) == 0
    (out / "000-a" / "summary.json").unlink()
    assert train.main(args) == 0
    rows = {r["run_id"]: r for r in json.loads((out / "manifest.json").read_text())["runs"]}
    assert {k: r["state"] for k, r in rows.items()} == {"000-a": "ok", "001-b": "ok"}
    assert json.loads((out / "000-a" / "summary.json").read_text())["resumed_at_steps"] == [8]
    assert (out / "000-a" / "checkpoints" / "8").is_dir()


def test_a_run_killed_as_it_writes_its_summary_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    raw, runs, out = plain_sweep(tmp_path)
    raw["checkpoint"] = {"every": 4}
    write_summary = train.write_atomic

    def killed_at_the_summary(path, text):
        if path.name == "summary.json":
            raise KeyboardInterrupt  # stands in for SIGKILL
        write_summary(path, text)

    monkeypatch.setattr(train, "write_atomic", killed_at_the_summary)
    with pytest.raises(KeyboardInterrupt):
        train.run_sweep(raw, out, quiet=True)
    monkeypatch.setattr(train, "write_atomic", write_summary)
    train.run_sweep(raw, out, quiet=True)
    summary = json.loads((out / runs[0].run_id / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["resumed_at_steps"] == [4]  # its last checkpoint
    assert not (out / runs[0].run_id / "checkpoints").exists()


def claimed_elsewhere(sweep, run_id, host="node07", pid=4242):
    (sweep.claims / f"{run_id}.claim").write_text(json.dumps({"host": host, "pid": pid, "since": time.time()}))


def test_a_worker_takes_over_its_run_once_the_claim_of_a_dead_worker_goes_stale(tmp_path, monkeypatch, capsys):
    # node07's worker heartbeats the run's claim until this worker has trained the other run, then dies (killed
    # at a time limit, say): this worker waits, and takes the run over once the claim is stale
    monkeypatch.setattr(sweeps, "STALE_CLAIM_S", 1.0)
    monkeypatch.setattr(train, "HELD_POLL_S", 0.2)
    raw, runs, out = plain_sweep(tmp_path)
    sweep = Sweep(out, raw, runs)
    claimed_elsewhere(sweep, runs[0].run_id)

    def heartbeat_then_die():
        deadline = time.monotonic() + 120  # a worker that raised leaves no summary to wait for
        while not sweep.summary_path(runs[1].run_id).is_file() and time.monotonic() < deadline:
            os.utime(sweep.claims / f"{runs[0].run_id}.claim")
            time.sleep(0.05)

    thread = threading.Thread(target=heartbeat_then_die)
    thread.start()
    summaries = train.run_sweep(raw, out, quiet=True)
    thread.join()
    assert sorted(s["run_id"] for s in summaries) == sorted(r.run_id for r in runs)
    assert all(s["status"] == "ok" for s in summaries)
    assert f"{runs[0].run_id}: claimed by node07 pid 4242; waiting" in capsys.readouterr().err
    assert (out / "report.md").is_file()


def test_a_worker_waits_for_its_run_that_a_live_worker_is_training(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "HELD_POLL_S", 0.2)
    raw, runs, out = plain_sweep(tmp_path)
    sweep = Sweep(out, raw, runs)
    held, other = runs[0].run_id, runs[1].run_id
    claimed_elsewhere(sweep, held, socket.gethostname(), os.getpid())  # alive: never stale

    def the_other_worker():  # finishes its run only after this worker has finished everything else
        deadline = time.monotonic() + 120
        while not sweep.summary_path(other).is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        sweep.run_dir(held).mkdir(exist_ok=True)
        write_atomic(sweep.summary_path(held), json.dumps({"run_id": held, "status": "ok", "eval_loss": 1.0}))
        sweep.release(held)

    thread = threading.Thread(target=the_other_worker)
    thread.start()
    summaries = {s["run_id"]: s for s in train.run_sweep(raw, out, quiet=True)}
    thread.join()
    assert set(summaries) == {held, other} and summaries[held]["eval_loss"] == 1.0  # waited, did not train it
    assert not (sweep.run_dir(held) / "metrics.jsonl").exists()


# --- 7a. claims kept through long phases, and lost by hung workers ---------------------------------------------
def on_host(monkeypatch, name):
    """Make this process look like a worker on host `name` (claims compare hosts)."""
    monkeypatch.setattr(sweeps.socket, "gethostname", lambda: name)


@pytest.fixture
def fast_claims(monkeypatch):
    monkeypatch.setattr(sweeps, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(sweeps, "STALE_CLAIM_S", 0.6)


def test_a_claim_stays_fresh_through_a_long_phase_without_steps(tmp_path, monkeypatch, fast_claims):
    # a compile, restore, evaluation or trunk longer than STALE_CLAIM_S: no step calls heartbeat() meanwhile
    raw, runs, out = plain_sweep(tmp_path)
    run_id = runs[0].run_id
    on_host(monkeypatch, "node-a")
    a = Sweep(out, raw, runs)
    assert a.claim(run_id)
    time.sleep(1.5)
    on_host(monkeypatch, "node-b")
    b = Sweep(out, raw, runs)
    assert b.state(run_id) == "running" and not b.claim(run_id)
    a.release(run_id)
    assert b.claim(run_id)
    b.release(run_id)
    assert not (b.claims / f"{run_id}.claim").exists()


def test_a_hung_worker_loses_its_run_and_stops_writing_it(tmp_path, monkeypatch, capfd, fast_claims):
    monkeypatch.setattr(sweeps, "HUNG_S", 0.2)
    raw, runs, out = plain_sweep(tmp_path)
    run_id = runs[0].run_id
    on_host(monkeypatch, "node-a")
    a = Sweep(out, raw, runs)
    assert a.claim(run_id)
    time.sleep(1.5)  # node-a's main thread hangs: its claim is no longer refreshed
    err = capfd.readouterr().err  # said once, with where each thread is (faulthandler writes to the fd)
    assert err.count("this worker looks hung") == 1 and f"claims on {run_id}" in err
    assert "test_a_hung_worker_loses_its_run" in err
    on_host(monkeypatch, "node-b")
    b = Sweep(out, raw, runs)
    assert b.state(run_id) == "pending" and b.claim(run_id)
    time.sleep(0.3)
    with pytest.raises(sweeps.ClaimLost, match=run_id):
        a.heartbeat(run_id)  # node-a wakes up at its next step
    a.release(run_id)
    assert json.loads((b.claims / f"{run_id}.claim").read_text())["host"] == "node-b"  # node-b's claim is kept
    b.release(run_id)


def test_a_run_taken_over_mid_training_is_left_to_the_worker_that_took_it(tmp_path, monkeypatch, capsys):
    # node07 takes over the run this worker is training (as if its claim had gone stale) after step 3 of 8:
    # this worker records nothing more for it, neither a failure nor a summary, and leaves node07's claim alone
    monkeypatch.setattr(sweeps, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(train, "HELD_POLL_S", 0.2)
    raw, runs, out = plain_sweep(tmp_path)
    sweep = Sweep(out, raw, runs)
    taken, claim = runs[0].run_id, sweep.claims / f"{runs[0].run_id}.claim"
    took_over, node07_saw = threading.Event(), {}
    real_step = train.Progress.step

    def step(self, done, *args):
        real_step(self, done, *args)
        if done == 3 and not took_over.is_set():
            claimed_elsewhere(sweep, taken)
            took_over.set()
            time.sleep(0.3)  # this worker's claim keeper looks meanwhile

    def node07():  # trains the run to its end (here: writes its summary) once this worker has let go of it
        if not took_over.wait(120):
            return
        time.sleep(2.0)
        node07_saw["claim"] = json.loads(claim.read_text())["host"] if claim.exists() else None
        if not sweep.summary_path(taken).exists():
            write_atomic(sweep.summary_path(taken), json.dumps({"run_id": taken, "status": "ok", "eval_loss": 1.0}))
        claim.unlink(missing_ok=True)

    monkeypatch.setattr(train.Progress, "step", step)
    thread = threading.Thread(target=node07)
    thread.start()
    summaries = {s["run_id"]: s for s in train.run_sweep(raw, out, quiet=True)}
    thread.join()
    assert node07_saw["claim"] == "node07"
    assert summaries[taken]["eval_loss"] == 1.0 and summaries[runs[1].run_id]["status"] == "ok"
    lines = (sweep.run_dir(taken) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert not (sweep.run_dir(taken) / "error.txt").exists()
    assert f"run {taken}: its claim was taken over by another worker" in capsys.readouterr().err


# --- 7c. a worker done with its share helps with the others' (--help-others) ---------------------------------
def test_a_worker_done_with_its_share_trains_the_runs_no_other_worker_has_taken(tmp_path):
    """Worker 0/2 of 6 runs, alone (worker 1's task is still queued): without --help-others it trains its share
    and leaves; with it, it then trains worker 1's runs, the last in the sweep first, except one a live worker
    holds (neither waited for nor trained). Worker 1, arriving, trains only that one."""
    raw = load_raw(write(tmp_path, PLAIN.replace("tokens = 512", "tokens = [512, 768, 1024]")))
    runs = expand(raw)
    run_ids = [r.run_id for r in runs]
    alone = train.run_sweep(raw, tmp_path / "alone", worker=(0, 2), quiet=True)
    share = {s["run_id"] for s in alone}
    others = [r.run_id for r in runs if r.run_id not in share]
    assert len(share) == len(others) == 3

    out = tmp_path / "helped"
    sweep = Sweep(out, raw, runs)
    held = others[0]
    claimed_elsewhere(sweep, held, socket.gethostname(), os.getpid())  # a live worker is training it
    helped = {s["run_id"]: s for s in train.run_sweep(raw, out, worker=(0, 2), quiet=True, help_others=True)}
    assert set(helped) == set(run_ids) - {held}
    assert all(s["status"] == "ok" for s in helped.values())
    assert not (sweep.run_dir(held) / "metrics.jsonl").exists()
    finished = sorted(helped, key=lambda run_id: sweep.summary_path(run_id).stat().st_mtime_ns)
    assert set(finished[:3]) == share and finished[3:] == [others[2], others[1]]  # its own share first

    (sweep.claims / f"{held}.claim").unlink()  # that worker died before starting it (no checkpoint)
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.jsonl")}
    late = train.run_sweep(raw, out, worker=(1, 2), quiet=True)
    assert sorted(s["run_id"] for s in late) == sorted(run_ids)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.jsonl") if p.parent.name != held} == before
    assert (out / "report.md").is_file()


# --- 7b. workers starting together (a SLURM array) ------------------------------------------------------------
def test_workers_starting_together_all_open_the_sweep(tmp_path, monkeypatch):
    raw, runs, out = plain_sweep(tmp_path)
    out.mkdir()
    (out / ".sweep.json.otherhost.4242.tmp").write_text('{"conf')  # a worker a moment ahead, mid-write
    Sweep(out, raw, runs)
    # one that lists the directory just after another worker created sweep.json and claims/ in it
    out2, listed = tmp_path / "out2", []
    real_iterdir = type(out2).iterdir

    def iterdir(self):
        if self == out2 and not listed:
            listed.append(True)
            Sweep(out2, raw, runs)
        return real_iterdir(self)

    out2.mkdir()
    (out2 / ".sweep.json.otherhost.4242.tmp").write_text("")
    monkeypatch.setattr(type(out2), "iterdir", iterdir)
    Sweep(out2, raw, runs)
    assert listed and json.loads((out2 / "sweep.json").read_text())["config"] == raw


def test_a_worker_of_another_sweep_creating_the_directory_first_is_still_an_error(tmp_path, monkeypatch):
    raw, runs, out = plain_sweep(tmp_path)
    real_create_once = sweeps.create_once

    def beaten(path, text):  # another sweep's worker writes sweep.json between our look and our write
        real_create_once(path, json.dumps({"config": {**raw, "name": "other"}}))
        return real_create_once(path, text)

    monkeypatch.setattr(sweeps, "create_once", beaten)
    with pytest.raises(ConfigError, match="already holds other results"):
        Sweep(out, raw, runs)
    assert json.loads((out / "sweep.json").read_text())["config"]["name"] == "other"  # theirs, not overwritten
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]


# --- 8. the resume command --------------------------------------------------------------------------------------
def test_the_printed_resume_command_is_shell_quoted(tmp_path, monkeypatch, capsys):
    (tmp_path / "my configs").mkdir()
    config = write(tmp_path / "my configs", TINY)

    def interrupted(*args, **kwargs):
        raise train.Interrupted("SIGTERM at step 3/8 of run 000-tiny; checkpoint saved")

    monkeypatch.setattr(train, "run_sweep", interrupted)
    argv = ["--config", str(config), "--out", str(tmp_path / "it's out"), "model.name=a b;rm -rf x"]
    assert train.main(argv) == 143
    command = capsys.readouterr().err.strip().splitlines()[-1]
    assert shlex.split(command) == ["python", "-m", "jaxscale.train", *argv]


# --- 4. numbers that pass types but not sense ------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("train.tokens=1e30", "train.tokens: must be <= 1e+15, got 1000000000000000019884624838656"),
    ("energy.hz=nan", "energy.hz: must be a finite number, got nan"),
    ("energy.hz=1e9", "energy.hz: must be <= 1000"),
    ("energy.idle_s=nan", "energy.idle_s: must be a finite number"),
    ("train.lr=nan", "train.lr: must be a finite number"),
    ("train.lr=inf", "train.lr: must be a finite number, got inf"),
    ("train.lr=-inf", "train.lr: must be a finite number"),
    ("train.weight_decay=nan", "train.weight_decay: must be a finite number"),
    ("train.weight_decay=-0.1", "train.weight_decay: must be >= 0, got -0.1"),
    ("train.grad_clip=nan", "train.grad_clip: must be a finite number"),
    ("train.beta1=2", "train.beta1: must be < 1, got 2.0"),
    ("train.beta2=1", "train.beta2: must be < 1, got 1.0"),
    ("train.beta1=-0.5", "train.beta1: must be >= 0"),
    ("train.min_lr_ratio=-1", "train.min_lr_ratio: must be >= 0, got -1.0"),
    ("train.min_lr_ratio=1.5", "train.min_lr_ratio: must be <= 1"),
    ("train.warmup_frac=1", "train.warmup_frac: must be < 1"),
    ("model.rope_theta=inf", "model.rope_theta: must be a finite number"),
    ("model.rope_theta=0", "model.rope_theta: must be > 0"),
    ("model.norm_eps=nan", "model.norm_eps: must be a finite number"),
    ("model.norm_eps=0", "model.norm_eps: must be > 0"),
    ("train.seed=-1", "train.seed: must be >= 0"),
    ("train.seed=1e12", "train.seed: must be <= 4.29497e+09"),
    ("model.d_model=1e9", "model.d_model: must be <= 65536"),
    ("train.eval_tokens=-1", "train.eval_tokens: must be >= 0"),
    ("checkpoint.keep=0", "checkpoint.keep: must be > 0"),
    ("sweep.repetitions=1e7", "sweep.repetitions: must be <= 10000"),
    ("mesh.data=-2", "mesh.data: must be >= -1"),
])
def test_numbers_out_of_range_are_errors_naming_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        expand(load_raw(write(tmp_path, TINY), [override]))
    assert str(err.value).startswith(message), str(err.value)


def test_every_number_of_a_config_has_a_range():
    import typing
    from jaxscale.config import RANGES, SECTIONS, Config
    sections = typing.get_type_hints(Config)
    numeric = {f"{section}.{key}" for section in SECTIONS
               for key, typ in typing.get_type_hints(sections[section]).items() if typ in (int, float)}
    assert len(numeric) > 30 and numeric == set(RANGES)


def test_nan_energy_rate_is_exit_2_not_a_traceback(tmp_path):
    out = tmp_path / "out"
    one_line_error(cli(write(tmp_path, TINY), out, "energy.hz=nan"), "energy.hz")
    assert not out.exists()


# --- 1. a run's damage never wedges the sweep -------------------------------------------------------------------
CHECKPOINTED = TINY.replace("tokens = 512", "tokens = 6400") + """
[model]
d_model = 16
d_mlp = 32
n_layers = 1
[checkpoint]
every = 20
final = true
"""


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A finished run of 100 steps that kept its last two checkpoints (80, 100), and its losses."""
    tmp = tmp_path_factory.mktemp("checkpointed")
    config, out = write(tmp, CHECKPOINTED, name="ck.toml"), tmp / "out"
    assert cli(config, out).returncode == 0
    return config, out, losses(out / "000-ck")


def test_when_no_checkpoint_can_be_read_the_run_starts_again_cleanly(checkpointed, tmp_path):
    import shutil
    config, finished, expected = checkpointed
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    run = out / "000-ck"
    (run / "summary.json").unlink()  # as if killed after its last checkpoint
    damaged = sorted((run / "checkpoints").glob("*/state/ocdbt.process_0/d/*"))
    assert {p.parts[-5] for p in damaged} == {"80", "100"}
    for path in damaged:  # the arrays only: metadata and the saved iterator position still read
        path.write_bytes(b"garbage")
    proc = cli(config, out)
    assert proc.returncode == 0, proc.stderr
    assert "no checkpoint could be read" in proc.stderr and "starting again from step 0" in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints-unreadable").iterdir()) == ["100", "80"]
    assert losses(run) == expected  # a fresh state and a fresh data order: the run never interrupted
    assert json.loads((run / "summary.json").read_text())["resumed_at_steps"] == []


def test_a_run_that_raises_is_recorded_failed_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    real = train._train

    def failing(run, state, book):
        if run.spec.run_id == "000-a":
            raise RuntimeError("the device fell over\nat step 3")
        return real(run, state, book)

    monkeypatch.setattr(train, "_train", failing)
    out = tmp_path / "out"
    assert train.main(["--config", str(write(tmp_path, PLAIN)), "--out", str(out), "--quiet"]) == 0
    import csv
    with open(out / "results.csv") as f:
        rows = {r["run_id"]: r for r in csv.DictReader(f)}
    assert rows["000-a"]["status"] == "failed" and rows["000-a"]["reason"] == "RuntimeError: the device fell over at step 3"
    assert rows["001-b"]["status"] == "ok"
    assert "the device fell over" in (out / "000-a" / "error.txt").read_text()
    assert "run 000-a failed (RuntimeError: the device fell over at step 3)" in capsys.readouterr().err


@pytest.mark.parametrize("error", [KeyboardInterrupt(), ConfigError("train.x: bad")])
def test_keyboard_interrupt_and_config_errors_still_stop_the_sweep(tmp_path, monkeypatch, error):
    def failing(run, state, book):
        raise error

    monkeypatch.setattr(train, "_train", failing)
    argv = ["--config", str(write(tmp_path, PLAIN)), "--out", str(tmp_path / "out"), "--quiet"]
    if isinstance(error, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            train.main(argv)
    else:
        assert train.main(argv) == 2
    assert not (tmp_path / "out" / "000-a" / "summary.json").exists()


# --- issue 16.5: a resumed run restores into abstract shapes, never building a second state ---------------------
def test_a_resumed_run_never_initialises_a_state(tmp_path, monkeypatch):
    import signal
    from jaxscale.progress import Progress
    config, out = write(tmp_path, CHECKPOINTED, name="ck.toml"), tmp_path / "out"
    argv = ["--config", str(config), "--out", str(out), "--quiet"]
    # the reference in this process too: an earlier test's settings (CPU code generation) can move the last bits
    assert train.main(["--config", str(config), "--out", str(tmp_path / "whole"), "--quiet"]) == 0
    expected = losses(tmp_path / "whole" / "000-ck")
    real_step = Progress.step

    def stop_at_30(self, step, *args):
        if step == 30:
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the run: checkpoint at the next boundary, then stop
        return real_step(self, step, *args)

    monkeypatch.setattr(Progress, "step", stop_at_30)
    assert train.main(argv) == 143
    monkeypatch.setattr(Progress, "step", real_step)
    calls = []
    real_init = train.init_state
    monkeypatch.setattr(train, "init_state", lambda *a, **k: calls.append(a) or real_init(*a, **k))
    assert train.main(argv) == 0
    assert calls == []
    summary = json.loads((out / "000-ck" / "summary.json").read_text())
    [resumed_at] = summary["resumed_at_steps"]
    assert 30 <= resumed_at < 100
    assert losses(out / "000-ck") == expected


# --- 5. nothing is written before the whole sweep is checked ---------------------------------------------------
def test_a_held_out_split_too_short_for_one_run_is_an_error_before_any_write(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("".join(f"the {i % 7} cat sat on mat {i % 11}.\n" for i in range(400)))
    (corpus / "valid.txt").write_text("the cat sat on the mat.\n")
    (corpus / "test.txt").write_text("the cat sat on the mat.\n")
    config = write(tmp_path, TINY.replace("seq_len = 16", "seq_len = [4, 64]").replace("tokens = 512", "tokens = 2048"))
    out = tmp_path / "out"
    line = one_line_error(cli(config, out, f"data.path={corpus}"), "data.seq_len: the held-out (valid) split has")
    assert "fewer than one window of seq_len + 1 = 65" in line
    assert not out.exists()  # not even the run with seq_len 4, which could have trained


# --- 9. fits the data cannot pin ----------------------------------------------------------------------------------
def nine_runs(tmp_path, noise=0.02):
    """A quickstart-like sweep: 3 small models x 3 budgets, 2% noise on a toy law."""
    import numpy as np
    from jaxscale.laws.law import ChinchillaLaw
    law = ChinchillaLaw(E=3.0, A=40.0, B=60.0, alpha=0.25, beta=0.25)
    n, d = (a.ravel() for a in np.meshgrid([7e4, 1.4e5, 3e5], [2e4, 1e5, 3e5]))
    loss = law.loss(n, d) * np.exp(np.random.default_rng(0).normal(0, noise, n.size))
    lines = ["run_id,model,n_params,tokens,flops,eval_loss,status"]
    lines += [f"{i:03d},m{int(a)},{int(a)},{int(b)},{6 * a * b},{c},ok" for i, (a, b, c) in enumerate(zip(n, d, loss))]
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "results.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_the_report_says_when_nine_runs_cannot_pin_the_law(tmp_path):
    from jaxscale.analyze import write_report
    report = write_report(nine_runs(tmp_path / "sweep"), bootstrap=200).read_text()
    assert "**Warning:** These runs cannot pin the law: the 95% intervals of E, A span more than a factor of 100" in report
    assert "**Warning:** The inference-aware optimum lies outside what was trained (" in report
    assert "outside the trained 2e+04 to 3e+05): the law is extrapolated there" in report  # D, the budgets trained


def test_laws_fit_says_the_same(tmp_path, capsys):
    from jaxscale.laws.__main__ import main
    csv_path = nine_runs(tmp_path) / "results.csv"
    argv = ["fit", str(csv_path), "--params-col", "n_params", "--tokens-col", "tokens", "--loss-col", "eval_loss",
            "--bootstrap", "200"]
    assert main(argv) == 0
    assert "warning: These runs cannot pin the law: the 95% intervals of E, A" in capsys.readouterr().out
    assert main(argv + ["--json"]) == 0
    assert any(w.startswith("These runs cannot pin") for w in json.loads(capsys.readouterr().out)["warnings"])


def test_range_warning_names_what_lies_outside_the_trained_runs():
    from jaxscale.laws.pinning import range_warning
    trained_n, trained_d = [7e4, 1.4e5, 3e5], [2e4, 1e5, 3e5]
    assert range_warning("X", [1e5], [2e4], trained_n, trained_d) is None
    assert range_warning("X", [4e4, 5.5e5], [1.1e4, 5.5e5], trained_n, trained_d) is None  # within 2x of the edges
    text = range_warning("The optimum", [5e3, 1e5], [1e6], trained_n, trained_d)
    assert text == ("The optimum lies outside what was trained (N = 5e+03, 1e+05 outside the trained 7e+04 to 3e+05; "
                    "D = 1e+06 outside the trained 2e+04 to 3e+05): the law is extrapolated there, not measured.")


# --- 10. random bad input ends in a run or a one-line error, never a traceback or a file outside --out ----------
POOL = ["0", "1", "2", "-1", "0.5", "0.9", "0.01", "1e-3", "4", "16", "100", "3.7", "1e15", "1e30", "-1e30", "nan",
        "inf", "-inf", "true", "'x'", "[]", "[0.1, 0.2]", "{a = 1}", "''", "'../x'", "'/tmp/x'", "'a/b'", "../x",
        "/tmp/x", "a/b", "a b", "2**31"]
NAMES = ["'ok-name'", "'x.y_z+1'", "'../x'", "'/tmp/x'", "'a/b'", "['a', 'b']", "3", "'.hidden'", "''", "'a b'"]
STRING_KEYS = ["model.name", "data.path", "tokenizer.path", "model.arch", "train.loss", "energy.meter"]
CHEAP_KEYS = ["train.lr", "train.weight_decay", "train.beta1", "train.beta2", "train.grad_clip", "model.name",
              "train.min_lr_ratio", "train.warmup_frac", "model.norm_eps", "train.seed", "checkpoint.every"]


def random_case(rng, keys):
    overrides = [f"{rng.choice(keys)}={rng.choice(POOL)}" for _ in range(rng.randint(1, 2))]
    return overrides, (rng.choice(NAMES) if rng.random() < 0.25 else None)


def case_config(tmp_path, i, name):
    text = (f"name = {name}\n" if name is not None else "") + TINY
    return write(tmp_path, text, name=f"case{i}.toml")


def test_random_overrides_end_in_a_valid_sweep_or_a_one_line_config_error(tmp_path):
    import random
    from jaxscale.config import RANGES
    rng = random.Random(20)
    keys = list(RANGES) + STRING_KEYS
    outcomes = {"valid": 0, "error": 0}
    for i in range(60):
        overrides, name = random_case(rng, keys)
        config = case_config(tmp_path, i, name)
        try:
            runs, _ = train.check_sweep(load_raw(config, overrides))
        except ConfigError as err:
            assert str(err) and "\n" not in str(err), (overrides, name, str(err))
            outcomes["error"] += 1
        except Exception as err:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{overrides} name={name}: {type(err).__name__}: {err}")
        else:
            out = (tmp_path / "out").resolve()
            assert all(sweeps.run_path(out, r.run_id).resolve().parent == out for r in runs), (overrides, name)
            outcomes["valid"] += 1
    assert outcomes["valid"] >= 4 and outcomes["error"] >= 30, outcomes  # both ends were exercised


def tree(path):
    return {p for p in path.rglob("*")}


@pytest.mark.parametrize("seed", range(5))
def test_random_overrides_through_the_command_line(tmp_path, seed):
    import random
    rng = random.Random(1000 + seed)
    overrides, name = random_case(rng, CHEAP_KEYS if seed < 2 else CHEAP_KEYS + STRING_KEYS + ["train.tokens"])
    if seed < 2:  # cases that may well train: small ones
        overrides = [o for o in overrides if not o.startswith("train.tokens")]
    config = case_config(tmp_path, seed, name)
    out = tmp_path / "sweep out"
    before, top = tree(tmp_path), set(ROOT.iterdir())
    proc = cli(config, out, *overrides)
    assert "Traceback" not in proc.stderr, (overrides, name, proc.stderr)
    if proc.returncode == 0:
        assert (out / "results.csv").is_file()
    else:
        one_line_error(proc)
        assert not out.exists()
    assert {p for p in tree(tmp_path) - before if out not in p.parents and p != out} == set()
    assert set(ROOT.iterdir()) == top
