"""The step loop keeps one step in flight: step n+1 is dispatched (its batch already placed) before step n's
metrics are awaited, except where the loop needs step n's own state (evaluation, checkpoint, the end)."""
import json

from conftest import ROOT

from jaxscale import train

SMOKE = ROOT / "configs" / "smoke.toml"


def test_step_n_plus_1_is_dispatched_before_step_n_is_awaited(tmp_path, monkeypatch):
    events = []
    compiled_for = train.compiled_for

    def logging_compiled_for(*args):
        step_fn, eval_fn = compiled_for(*args)

        def dispatch(state, batch):
            events.append(("dispatch", int(state.step) + 1))  # the state is ready: the previous step is done
            return step_fn(state, batch)
        return dispatch, eval_fn

    class LoggingProgress(train.Progress):
        def step(self, step, steps, loss, tokens_per_s):
            events.append(("recorded", step))

    monkeypatch.setattr(train, "compiled_for", logging_compiled_for)
    monkeypatch.setattr(train, "Progress", LoggingProgress)
    out = tmp_path / "sweep"
    # 32 steps of d16; evaluations after steps 10, 20 and 30 and a checkpoint after step 20 make the loop drain there
    assert train.main(["--config", str(SMOKE), "--out", str(out), "--quiet", "train.tokens=8192",
                       "train.eval_every=10", "checkpoint.every=20"]) == 0
    run = events[:events.index(("recorded", 32)) + 1]  # the first run (d16)
    order = {event: i for i, event in enumerate(run)}
    for n in range(1, 32):
        drained = n % 10 == 0
        assert (order[("dispatch", n + 1)] < order[("recorded", n)]) is not drained, n
    assert order[("recorded", 31)] < order[("recorded", 32)]
    first = sorted(p for p in out.iterdir() if p.name.startswith("000-"))[0]
    lines = [json.loads(x) for x in (first / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 33))  # one line a step, the evaluation on its step's line
    assert "eval_loss" in lines[9] and "eval_loss" not in lines[10]
    assert all(x["step_s"] > 0 for x in lines)
