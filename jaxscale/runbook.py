"""What a run has done so far: saved in each checkpoint beside the train state and the data position."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class RunBook:
    records: list[dict] = dataclasses.field(default_factory=list)  # one per step trained: metrics.jsonl's lines
    wall_s: float = 0.0  # wall time of the segments before this one
    resumed_at: list[int] = dataclasses.field(default_factory=list)  # the step each later segment began at
    energy: list[dict] = dataclasses.field(default_factory=list)  # the sampler rows of the segments before this one
    energy_live: dict | None = None  # in a checkpoint: this segment's figures up to it (a kill keeps them)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RunBook:
        """From a checkpoint's JSON; keys this version does not know (older checkpoints) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def resume(self) -> RunBook:
        """The book a new segment continues with: a killed segment's live figures become a finished segment."""
        energy = self.energy + ([self.energy_live] if self.energy_live else [])
        return dataclasses.replace(self, energy=energy, energy_live=None,
                                   resumed_at=self.resumed_at + [len(self.records)])
