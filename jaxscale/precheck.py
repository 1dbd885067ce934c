"""Everything a sweep needs, checked before it writes anything: each run's config, corpus, tokenizer, budget,
held-out split and resolved `auto`s. A ConfigError here leaves no trace on disk (the token cache aside)."""
from __future__ import annotations

import dataclasses
import functools

from jaxscale import hf, runtime, sharding
from jaxscale.config import Config, ConfigError, RunSpec, expand
from jaxscale.data.corpora import load_corpus
from jaxscale.data.loader import eval_batches, plan_budget
from jaxscale.data.tokenize import load_tokenizer, token_splits


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Token arrays and vocabulary for one (data, tokenizer) setting, shared by every run that uses it."""

    splits: dict
    vocab_size: int
    description: str


def prepare_data(config: Config, cache: dict) -> Prepared:
    key = (config.data.source, config.data.path, config.data.hf_name, config.tokenizer)
    if key not in cache:
        corpus = load_corpus(config.data)
        tokenizer = load_tokenizer(config.tokenizer, corpus)
        cache[key] = Prepared(token_splits(corpus, tokenizer), tokenizer.vocab_size, f"{corpus.name} / {tokenizer.name}")
    return cache[key]


@functools.lru_cache(maxsize=None)
def mesh_for(cfg):
    return sharding.make_mesh(cfg)


def check_sweep(raw: dict) -> tuple[list[RunSpec], dict]:
    """(runs, data cache): every run's config, corpus, tokenizer, budget, held-out split and resolved `auto`s
    checked (ConfigError) before anything of the sweep is written."""
    runs = expand(raw)
    data_cache: dict = {}
    for spec in runs:
        config, seq_len = spec.config, spec.config.data.seq_len
        data = prepare_data(config, data_cache)
        plan_budget(len(data.splits["train"]), seq_len, config.train.batch_size, config.train.tokens,
                    max_epochs=config.data.max_epochs)
        mesh = mesh_for(config.mesh)
        shards = sharding.batch_shards(mesh)
        if config.train.batch_size % shards:
            raise ConfigError(f"train.batch_size: {config.train.batch_size} is not a multiple of mesh data x fsdp = "
                              f"{shards} (the batch's rows are split over them)")
        eval_batches(data.splits["valid"], seq_len, config.train.batch_size, config.train.eval_tokens, shards)
        runtime.resolve(config, runtime.hardware(mesh.devices.flat), data.vocab_size)
        if config.model.init_from:
            hf.check_compatible(config, data.vocab_size)
        if config.train.batch_size % sharding.data_shard(mesh)[1]:
            raise ConfigError(f"train.batch_size {config.train.batch_size} is not divisible by the "
                              f"{sharding.data_shard(mesh)[1]} processes")
    return runs, data_cache
