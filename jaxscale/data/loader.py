"""Grain pipelines over token windows: exactly `steps` batches for a budget, reshuffled each epoch."""
from __future__ import annotations

from dataclasses import dataclass

import grain
import numpy as np

from jaxscale.config import ConfigError


@dataclass(frozen=True)
class Budget:
    """What a token budget D becomes: steps = D // (batch x seq_len) full batches."""

    steps: int
    tokens: int  # tokens actually trained on: steps x batch x seq_len
    epochs: float  # passes over the train split's windows
    windows: int  # windows of seq_len + 1 tokens in one pass


def windows_in(n_tokens: int, seq_len: int) -> int:
    """Non-overlapping windows of seq_len inputs; each also needs its next token as a target."""
    return max(0, (n_tokens - 1) // seq_len)


def plan_budget(n_tokens: int, seq_len: int, batch_size: int, budget: int, max_epochs: float = 0.0) -> Budget:
    """`max_epochs` > 0: a budget that would pass over the train split more often than that is an error."""
    steps = budget // (batch_size * seq_len)
    windows = windows_in(n_tokens, seq_len)
    if windows < batch_size:
        raise ConfigError(f"train split has {windows} windows of {seq_len + 1} tokens, fewer than one batch "
                          f"(train.batch_size {batch_size}); use a larger corpus or smaller data.seq_len")
    epochs = steps * batch_size / windows
    if max_epochs and epochs > max_epochs:
        raise ConfigError(f"train.tokens {budget:,}: {epochs:.1f} passes over a train split of {n_tokens:,} tokens, "
                          f"more than data.max_epochs = {max_epochs:g}; give a larger corpus (data.path=DIR) "
                          "or raise data.max_epochs")
    return Budget(steps=steps, tokens=steps * batch_size * seq_len, epochs=epochs, windows=windows)


class _Windows:
    """Random access to window i of a (memmapped) token array, as int32 [seq_len + 1]."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len

    def __len__(self):
        return windows_in(len(self.tokens), self.seq_len)

    def __getitem__(self, i):
        start = i * self.seq_len
        return np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int32)


def train_dataset(tokens: np.ndarray, seq_len: int, batch_size: int, steps: int, seed: int,
                  shard_index: int = 0, shard_count: int = 1) -> grain.MapDataset:
    """`steps` global batches of `batch_size` windows; this process gets rows shard_index::shard_count
    of each, so the global batches are the same whatever the number of processes."""
    if batch_size % shard_count:
        raise ConfigError(f"train.batch_size {batch_size} is not divisible by the {shard_count} processes")
    windows = _Windows(tokens, seq_len)
    epochs = -(-steps * batch_size // len(windows))
    ds = grain.MapDataset.source(windows).shuffle(seed=seed).repeat(epochs)
    ds = ds[: steps * batch_size][shard_index::shard_count]
    return ds.batch(batch_size // shard_count, drop_remainder=True)


# Windows of a memmapped array are cheap to read: one reader thread a few batches ahead. Grain's defaults
# (16 threads, 500 elements ahead) are for remote files; here they cost ~1 ms of host time a step (GIL
# contention and the prefetch buffer's bookkeeping), more than a small model's whole step.
READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)


def train_iterator(ds: grain.MapDataset, place=None) -> grain.DatasetIterator:
    """An iterator whose position survives checkpoints (`get_state`/`set_state`). `place` (rows -> device
    array) runs in the reader thread, so the next batch is on the device before the loop asks for it."""
    return iter((ds.map(place) if place else ds).to_iter_dataset(READ_OPTIONS))


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, max_tokens: int,
                 multiple: int = 1) -> list[np.ndarray]:
    """The first windows of a held-out split, in order, as whole batches (at least one window) whose rows are a
    multiple of `multiple` (the batch's shards over the mesh)."""
    windows = _Windows(tokens, seq_len)
    n = min(len(windows), max(1, max_tokens // seq_len))
    if n == 0:
        raise ConfigError(f"data.seq_len: the held-out (valid) split has {len(tokens)} tokens, fewer than one window "
                          f"of seq_len + 1 = {seq_len + 1}; use a smaller data.seq_len or a larger valid split")
    size = min(batch_size, n) // multiple * multiple
    if size == 0:
        raise ConfigError(f"train.eval_tokens: {n} held-out window(s) of data.seq_len {seq_len} cannot be split over "
                          f"mesh data x fsdp = {multiple}; allowed: at least {multiple * seq_len} tokens, from a valid "
                          f"split of at least {multiple * seq_len + 1}")
    rows = np.stack([windows[i] for i in range(n - n % size)])
    return [rows[i:i + size] for i in range(0, len(rows), size)]
