"""The checkpointed run book: a JSON round trip, what a resumed segment starts from, older checkpoints' keys."""
import json

from jaxscale.runbook import RunBook


def test_json_round_trip_and_resume():
    book = RunBook(records=[{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.25}], wall_s=12.5, resumed_at=[],
                   energy=[{"energy_j": 10.0}], energy_live={"energy_j": 3.0})
    again = RunBook.from_json(json.loads(json.dumps(book.to_json())))
    assert again == book
    resumed = again.resume()
    assert resumed.energy == [{"energy_j": 10.0}, {"energy_j": 3.0}] and resumed.energy_live is None
    assert resumed.resumed_at == [2] and resumed.records == book.records and resumed.wall_s == 12.5
    assert book.energy == [{"energy_j": 10.0}]  # resume() leaves the saved book as it was


def test_a_book_saved_by_an_older_version_still_reads():
    old = {"records": [], "wall_s": 1.0, "eval_s": 0.5, "compile_s": 2.0, "resumed_at": [], "energy": [],
           "wall_s_at_save": 1.0}
    assert RunBook.from_json(old) == RunBook(wall_s=1.0)
    assert RunBook.from_json(old).resume().resumed_at == [0]  # a stop-signal segment: nothing live to add
