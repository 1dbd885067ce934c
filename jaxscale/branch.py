"""Trunk-and-cooldown sweeps (`sweep.branch = true` with `train.schedule = "wsd"`).

Runs that differ only in their token budget share one trunk: the group's largest budget trains at constant rate
to its own cooldown and, passing each smaller budget's cooldown start, saves a trunk checkpoint there
(`<sweep>/trunks/<largest run>/`). Each smaller budget restores its checkpoint and trains only its cooldown. Up to
its cooldown start a branch's state is the one a separate WSD run of that budget would have: the learning rate is
the same constant after a warmup the group shares (`train.warmup_steps` when set, the same as each run's own;
else ceil(warmup_frac × the smallest budget's steps)), and a batch's place in the data order does not depend on
the budget.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from jaxscale.config import RunSpec, cooldown_steps, warmup_steps
from jaxscale.sweep import run_path


@dataclasses.dataclass(frozen=True)
class Branch:
    trunk: str  # run id of the group's largest budget: its own run trains the trunk
    start: int  # this run's cooldown start, where it leaves the trunk (the trunk run's own: it never leaves)
    points: tuple[int, ...]  # trunk run only: the other budgets' cooldown starts, saved for them
    warmup_steps: int
    trunk_dir: Path

    @property
    def is_trunk(self) -> bool:
        return self.start == 0

    @property
    def start_dir(self) -> Path:
        """The trunk checkpoint this branch starts from."""
        return self.trunk_dir / str(self.start)


def steps_of(spec: RunSpec) -> int:
    train, seq_len = spec.config.train, spec.config.data.seq_len
    return train.tokens // (train.batch_size * seq_len)


def plan_branches(runs: list[RunSpec], out: Path) -> dict[str, Branch]:
    """Each branched run's place in its group; runs alone in their group train as usual (absent here)."""
    groups: dict = {}
    for spec in runs:
        if spec.config.sweep.branch:
            key = dataclasses.replace(spec.config, train=dataclasses.replace(spec.config.train, tokens=0))
            groups.setdefault(key, []).append(spec)
    plans = {}
    for members in groups.values():
        if len({steps_of(m) for m in members}) < 2:
            continue
        largest = max(members, key=steps_of)
        warmup = warmup_steps(members[0].config.train, min(map(steps_of, members)))
        start = {m.run_id: steps_of(m) - cooldown_steps(m.config.train, steps_of(m)) for m in members}
        trunk_dir = run_path(Path(out) / "trunks", largest.run_id)
        points = tuple(sorted({start[m.run_id] for m in members if m is not largest}))
        for m in members:
            own = m is largest
            plans[m.run_id] = Branch(largest.run_id, 0 if own else start[m.run_id], points if own else (), warmup,
                                     trunk_dir)
    return plans


def trained_steps(spec: RunSpec, branch: Branch | None) -> int:
    """The steps this run trains itself: a branch only its cooldown, a trunk or a plain run all of its budget."""
    return steps_of(spec) - (branch.start if branch else 0)


def worker_share(runs: list[RunSpec], branches: dict[str, Branch], worker: tuple[int, int],
                 flops: Callable[[RunSpec], float]) -> list[RunSpec]:
    """The runs `--worker I/N` trains, in sweep order: runs (or, in a branched sweep, whole groups of a trunk and
    its branches, so no branch waits on another worker's trunk) are dealt heaviest first to the worker with the
    least compute so far. Every N-th run would give one worker every largest budget whenever N divides the
    number of budgets (the tiny grid's 8 workers: the busiest 4.0x an even share); runs of equal weight are
    still dealt every N-th from I. With more workers than groups, trunks and branches are dealt one by one
    instead (a branch then waits for its trunk's checkpoint where another worker trains it), so no worker is
    left without runs. `flops(spec)`: a run's training FLOPs per step, so a unit's weight is its steps trained
    x that."""
    index, count = worker
    split = count > len({b.trunk for b in branches.values()})
    units: dict[str, list[RunSpec]] = {}
    for spec in runs:
        whole = spec.run_id in branches and not split
        units.setdefault(branches[spec.run_id].trunk if whole else spec.run_id, []).append(spec)
    weight = {key: sum(trained_steps(m, branches.get(m.run_id)) * flops(m) for m in members)
              for key, members in units.items()}
    load, mine = [0.0] * count, set()
    for key in sorted(units, key=lambda k: -weight[k]):  # stable: equal weights keep the sweep's order
        least = min(range(count), key=load.__getitem__)
        load[least] += weight[key]
        if least == index:
            mine.update(m.run_id for m in units[key])
    return [r for r in runs if r.run_id in mine]
