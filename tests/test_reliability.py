"""No bad input or damaged file wedges a sweep, writes outside it, or ends in a traceback (issue 20)."""
import json
import os
import shlex
import socket
import subprocess
import sys

import pytest

from conftest import ROOT
from jaxscale import train
from jaxscale.config import ConfigError, expand, load_raw
from jaxscale import sweep as sweeps
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
    with pytest.raises(ConfigError, match="same labels"):
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
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_claims_are_taken_over_without_leaving_files(tmp_path):
    raw = load_raw(write(tmp_path, PLAIN))
    runs = expand(raw)
    sweep = Sweep(tmp_path / "out", raw, runs)
    for run in runs:  # a worker on this host that died holding each run
        (sweep.claims / f"{run.run_id}.claim").write_text(
            json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "since": 0}))
    assert [sweep.claim(r.run_id) for r in runs] == [True, True]
    assert sorted(p.name for p in sweep.claims.iterdir()) == [f"{r.run_id}.claim" for r in runs]
    (sweep.claims / ".000-a.stale.12345").write_text("{}")  # left by an older version
    Sweep(tmp_path / "out", raw, runs)
    assert not list(sweep.claims.glob(".*"))


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
