"""TensorBoard event files: read back frame by frame (TFRecord framing, Event protos), they hold every step's loss,
learning rate and tokens/s, and the held-out losses, as metrics.jsonl and summary.json have them."""
import json
import struct

import pytest

from jaxscale.train import main

pytest.importorskip("tensorboardX")
from tensorboardX.proto import event_pb2  # noqa: E402


def scalars(run_dir):
    out = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


CONFIG = """
[data]
seq_len = 32
[tokenizer]
vocab_size = 512
[model]
d_model = 16
d_mlp = 64
n_layers = 1
[train]
batch_size = 8
tokens = 8192
eval_every = 8
eval_tokens = 2048
"""


def test_each_run_writes_its_curves_for_tensorboard(tmp_path):
    out, config = tmp_path / "sweep", tmp_path / "tb.toml"
    config.write_text(CONFIG)
    assert main(["--config", str(config), "--out", str(out), "--quiet"]) == 0
    (run,) = [p for p in out.iterdir() if (p / "metrics.jsonl").is_file()]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    got = scalars(run)
    assert sorted(got["train/loss"]) == [r["step"] for r in records] == list(range(1, 33))
    for r in records:
        assert got["train/loss"][r["step"]] == pytest.approx(r["loss"], rel=1e-6)
        assert got["train/lr"][r["step"]] == pytest.approx(r["lr"], rel=1e-6)
        assert got["train/tokens_per_s"][r["step"]] == pytest.approx(r["tokens_per_s"], rel=1e-6)
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    evals[32] = json.loads((run / "summary.json").read_text())["eval_loss"]
    assert sorted(got["eval/loss"]) == [8, 16, 24, 32]
    assert all(got["eval/loss"][s] == pytest.approx(v, rel=1e-6) for s, v in evals.items())
    assert "energy/step_j" not in got  # no sensor here: unavailable, never 0
