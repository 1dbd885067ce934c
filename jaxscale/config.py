"""Run configuration: TOML + key=value overrides, validated into frozen dataclasses.

A value given as a list where the field takes a scalar is a sweep axis; a section given as an
array of tables (``[[model]]``) is a sweep axis over whole sections. `expand` turns one config
into the runs of its sweep (every combination, times `sweep.repetitions`).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import random
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """Bad configuration: the message names the key or file and what is allowed."""


# A name that becomes one directory: no separators, never "." or "..", never hidden.
SAFE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+-]")
NAME_RULE = "letters, digits, '.', '_', '-', '+', at most 100 characters, not starting with '.'"


def path_part(text: str) -> str:
    """`text` made a SAFE_NAME: other characters become '_' (a model.name "org/model" gives "org_model")."""
    safe = _UNSAFE_CHARS.sub("_", text)[:100]
    return safe if SAFE_NAME.fullmatch(safe) else "_" + safe[1:100]


def check_name(value) -> str:
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ConfigError(f"name: {value!r} is not a usable sweep name; allowed: {NAME_RULE}")
    return value


@dataclass(frozen=True)
class DataConfig:
    source: str = "auto"  # auto (the embedded stdlib corpus) | hf | dir | stdlib
    path: str = ""  # directory with train/valid/test text (WikiText raw layout); when given, it is the corpus
    hf_name: str = "wikitext-2-raw-v1"  # for source = "hf" (dataset "wikitext")
    seq_len: int = 64
    max_epochs: float = 0.0  # > 0: a budget needing more passes over the train split than this is an error


@dataclass(frozen=True)
class TokenizerConfig:
    path: str = ""  # tokenizer.json (Hugging Face) or .model (SentencePiece); empty: train a byte-level BPE
    vocab_size: int = 4096  # for the trained BPE


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "tiny"  # tiny | llama
    name: str = ""  # label in results; default d{d_model}-l{n_layers}
    d_model: int = 64
    d_mlp: int = 256
    n_layers: int = 2
    n_heads: int = 0  # 0: max(1, d_model // 32) for tiny, d_model // 64 for llama
    n_kv_heads: int = 0  # llama: 0 means n_heads (no grouping)
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # tiny only; llama is untied
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    attention: str = "auto"  # auto (cuDNN's fused attention on bf16 GPUs where it runs, else XLA's) | xla | cudnn
    # What the backward pass recomputes of each block: none | full (all of it) | dots (keeps the matmul
    # and fused attention outputs) | mlp (keeps the MLP's gate and up outputs, recomputes attention) | auto (resolved by the
    # runtime before the model is built). true/false in old configs mean full/none.
    remat: str = "none"
    scan_layers: bool = True  # llama: one nn.scan over the blocks (params stacked on a "layers" axis)
    init_from: str = ""  # llama: a Hugging Face Llama directory (config.json + safetensors) to start from

    @property
    def label(self) -> str:
        return self.name or f"d{self.d_model}-l{self.n_layers}"


@dataclass(frozen=True)
class TrainConfig:
    tokens: int = 100_000  # token budget D: steps = tokens // (batch_size * seq_len)
    batch_size: int = 16
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio
    warmup_frac: float = 0.1  # warmup steps = ceil(warmup_frac * steps)
    warmup_steps: int = -1  # >= 0: this many warmup steps at every budget, in place of warmup_frac
    schedule: str = "cosine"  # cosine | wsd (warmup, constant lr, then a cooldown over the last steps)
    cooldown_frac: float = 0.2  # wsd: cooldown steps = ceil(cooldown_frac * steps)
    cooldown_shape: str = "1-sqrt"  # wsd: linear | 1-sqrt (lr falls as 1 - sqrt of the cooldown's progress)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 0  # 0: held-out loss only at the end of the run
    eval_tokens: int = 65_536  # held-out tokens per evaluation (capped by the split's size)
    loss: str = "auto"  # output-layer loss: full (all logits) | blocked (tiles, recomputed) | stored (tiles, kept) | auto
    loss_chunk: int = 128  # tokens per tile of the blocked loss (at least loss.MIN_TOKEN_BLOCK)


@dataclass(frozen=True)
class SweepConfig:
    repetitions: int = 1
    order: str = "sequential"  # sequential | random (shuffled with `seed`, recorded in the manifest)
    seed: int = 0
    branch: bool = False  # wsd: one trunk per model, a cooldown branched off it for each budget (jaxscale.branch)


@dataclass(frozen=True)
class EnergyConfig:
    meter: str = "auto"  # auto | nvml | rapl | none
    hz: float = 10.0
    idle_s: float = 0.0


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500  # steps between checkpoints; 0: only when interrupted
    keep: int = 2  # newest checkpoints kept
    final: bool = False  # keep a checkpoint of the finished run (else its checkpoints are removed)


@dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1: all devices not used by the other axes
    fsdp: int = 1
    tensor: int = 1


@dataclass(frozen=True)
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its id, its resolved config, and its repetition index."""

    run_id: str
    config: Config
    repetition: int = 0


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "name"}
_CHOICES = {
    "data.source": ("auto", "dir", "hf", "stdlib"),
    "model.arch": ("tiny", "llama"),
    "model.dtype": ("float32", "bfloat16"),
    "model.attention": ("auto", "xla", "cudnn"),
    "model.remat": ("none", "full", "dots", "mlp", "auto"),
    "sweep.order": ("sequential", "random"),
    "train.loss": ("auto", "blocked", "stored", "full"),
    "train.schedule": ("cosine", "wsd"),
    "train.cooldown_shape": ("linear", "1-sqrt"),
    "energy.meter": ("auto", "nvml", "rapl", "none"),
}


def _section_class(name: str) -> type:
    return {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name != "name"}[name]


def _field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_LEGACY_BOOLS = {"model.remat": {True: "full", False: "none"}}  # keys that were booleans once


def _coerce(key: str, value, typ: type):
    if isinstance(value, bool) and key in _LEGACY_BOOLS:
        return _LEGACY_BOOLS[key][value]
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")


def _check_section(section: str, table) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}]: expected a table of keys, got {table!r}")
    allowed = _field_types(_section_class(section))
    for key in table:
        if key not in allowed:
            raise ConfigError(f"unknown key {section}.{key}; allowed: {', '.join(allowed)}")


def parse_override(text: str) -> tuple[str, object]:
    """`train.tokens=1e4` -> ("train.tokens", 10000.0); values are TOML, else plain strings."""
    key, sep, raw = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"override {text!r}: expected section.key=value, e.g. train.tokens=1e4")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def load_raw(path: str | Path, overrides: list[str] = ()) -> dict:
    """Read a TOML config and apply overrides; unknown sections and keys are errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    raw.setdefault("name", path_part(path.stem))
    check_name(raw["name"])
    for text in overrides:
        key, value = parse_override(text)
        section, _, leaf = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"unknown section {section!r} in {key}; allowed: {', '.join(SECTIONS)}")
        tables = raw.setdefault(section, {})
        for table in tables if isinstance(tables, list) else [tables]:
            if not isinstance(table, dict):
                raise ConfigError(f"[{section}]: expected a table of keys, got {table!r} (so {key} cannot be set)")
            table[leaf] = value
    for section, tables in raw.items():
        if section == "name":
            continue
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}]; allowed: {', '.join(SECTIONS)}")
        for table in tables if isinstance(tables, list) else [tables]:
            _check_section(section, table)
    return raw


def _axes(raw: dict) -> list[tuple[str, list]]:
    """Sweep axes in file order: (key, values); key is "section" for arrays of tables."""
    axes = []
    for section, tables in raw.items():
        if section == "name":
            continue
        if isinstance(tables, list):
            if not tables:
                raise ConfigError(f"{section}: an empty array of tables sweeps over nothing")
            axes.append((section, tables))
            continue
        types = _field_types(_section_class(section))
        for key, value in tables.items():
            if isinstance(value, list):
                if not value:
                    raise ConfigError(f"{section}.{key}: an empty list sweeps over nothing")
                axes.append((f"{section}.{key}", value))
    return axes


def _build(raw: dict, point: dict) -> Config:
    sections = {}
    for section in SECTIONS:
        base = raw.get(section, {})
        table = dict(point[section]) if section in point else ({} if isinstance(base, list) else dict(base))
        for key, value in point.items():
            if key.startswith(section + "."):
                table[key.split(".", 1)[1]] = value
        types = _field_types(_section_class(section))
        values = {k: _coerce(f"{section}.{k}", v, types[k]) for k, v in table.items()}
        for k, v in values.items():
            allowed = _CHOICES.get(f"{section}.{k}")
            if allowed and v not in allowed:
                raise ConfigError(f"{section}.{k}: {v!r} is not one of {', '.join(allowed)}")
        sections[section] = _section_class(section)(**values)
    return Config(name=check_name(raw.get("name", "run")), **sections)


def _label(key: str, point: dict, config: Config) -> str:
    """A run's label for one sweep axis: a [[model]]'s name, else the axis' values (tokens5000, or a [[train]]
    table's keys and values: lr0.003-tokens5000)."""
    if key == "model":
        return config.model.label
    if "." not in key:  # any other array of tables
        return "-".join(_label(f"{key}.{leaf}", point, config) for leaf in point[key]) or key
    section, leaf = key.split(".")
    value = getattr(getattr(config, section), leaf)
    if isinstance(value, str) and "/" in value:  # a path: init_from_ckpt_llama-7b, the same with or without a last /
        return f"{leaf}_{value.strip('/')}"
    return f"{leaf}{value}"  # the typed value: tokens5000, lr0.003, lr1e+30


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    low_open: bool = False  # the bound itself is not allowed
    high_open: bool = False

    def check(self, key: str, value) -> None:
        if value < self.low or (self.low_open and value == self.low):
            raise ConfigError(f"{key}: must be {'>' if self.low_open else '>='} {self.low:g}, got {value}")
        if value > self.high or (self.high_open and value == self.high):
            raise ConfigError(f"{key}: must be {'<' if self.high_open else '<='} {self.high:g}, got {value}")


_POSITIVE, _NONNEGATIVE, _FRACTION = Range(0, math.inf, low_open=True), Range(0, math.inf), Range(0, 1, high_open=True)
# Every number of a config. Upper bounds keep values inside what the loader, Grain (seeds < 2**32) and int64
# arithmetic take, far above any sweep this tool runs; floats are finite already (_coerce).
RANGES = {
    "data.seq_len": Range(0, 2**20, low_open=True), "tokenizer.vocab_size": Range(256, 2**24),
    "model.d_model": Range(0, 2**16, low_open=True), "model.d_mlp": Range(0, 2**18, low_open=True),
    "model.n_layers": Range(0, 1024, low_open=True), "model.n_heads": Range(0, 2**12),
    "model.n_kv_heads": Range(0, 2**12), "model.rope_theta": _POSITIVE, "model.norm_eps": Range(0, 1, low_open=True),
    "train.tokens": Range(1, 1e15), "train.batch_size": Range(0, 2**20, low_open=True), "train.lr": _NONNEGATIVE,
    "train.min_lr_ratio": Range(0, 1), "train.warmup_frac": _FRACTION, "train.weight_decay": _NONNEGATIVE,
    "train.beta1": _FRACTION, "train.beta2": _FRACTION, "train.grad_clip": _NONNEGATIVE,
    "train.seed": Range(0, 2**32 - 1), "train.eval_every": Range(0, 2**40), "train.eval_tokens": Range(0, 1e15),
    "train.loss_chunk": Range(0, 2**20, low_open=True), "sweep.repetitions": Range(0, 10_000, low_open=True),
    "sweep.seed": Range(-2**63, 2**63 - 1), "energy.hz": Range(0, 1000, low_open=True),
    "energy.idle_s": Range(0, 86_400), "checkpoint.every": Range(0, 2**40),
    "checkpoint.keep": Range(0, 10_000, low_open=True), "mesh.data": Range(-1, 2**20),
    "mesh.fsdp": Range(-1, 2**20), "mesh.tensor": Range(-1, 2**20),
    "data.max_epochs": Range(0, 1e6), "train.cooldown_frac": Range(0, 1, low_open=True),
    "train.warmup_steps": Range(-1, 2**40),
}


def _ceil(x: float) -> int:
    return -(-int(round(x * 1000)) // 1000)  # ceil without float noise


def warmup_steps(train: TrainConfig, steps: int) -> int:
    return train.warmup_steps if train.warmup_steps >= 0 else _ceil(train.warmup_frac * steps)


def cooldown_steps(train: TrainConfig, steps: int) -> int:
    return max(1, _ceil(train.cooldown_frac * steps)) if train.schedule == "wsd" else 0


def validate(config: Config) -> None:
    """Impossible values: stop before anything runs."""
    d, t, m = config.data, config.train, config.model
    for key, limits in RANGES.items():
        section, leaf = key.split(".")
        limits.check(key, getattr(getattr(config, section), leaf))
    batch_tokens = t.batch_size * d.seq_len
    if t.tokens < batch_tokens:
        raise ConfigError(
            f"train.tokens: budget {t.tokens} is smaller than one batch "
            f"(train.batch_size {t.batch_size} x data.seq_len {d.seq_len} = {batch_tokens})")
    if not 0 <= t.warmup_frac < 1:
        raise ConfigError(f"train.warmup_frac: must be in [0, 1), got {t.warmup_frac}")
    if config.sweep.branch and t.schedule != "wsd":
        raise ConfigError("sweep.branch: needs train.schedule = 'wsd' (a cosine run's learning rate depends on its "
                          "budget from the first step, so its runs share no trunk)")
    if t.schedule == "wsd" and t.warmup_steps < 0 and t.warmup_frac + t.cooldown_frac > 1:
        raise ConfigError(f"train.cooldown_frac: warmup ({t.warmup_frac}) and cooldown ({t.cooldown_frac}) "
                          "together exceed the run")
    steps = t.tokens // batch_tokens
    after = max(cooldown_steps(t, steps), 1)  # wsd's cooldown, or one step of cosine's decay
    if t.warmup_steps >= 0 and t.warmup_steps + after > steps:
        what = f"the cooldown's {after}" if t.schedule == "wsd" else "a decay"
        raise ConfigError(f"train.warmup_steps: {t.warmup_steps} warmup steps leave no room for {what} in a run "
                          f"of {steps} steps (train.tokens {t.tokens}); allowed: at most {steps - after}")
    n_heads = m.n_heads or default_heads(m)
    if m.d_model % n_heads:
        raise ConfigError(f"model.n_heads: {n_heads} does not divide model.d_model {m.d_model}")
    if m.n_kv_heads and m.arch != "llama":
        raise ConfigError(f"model.n_kv_heads: only model.arch = 'llama' groups its key/value heads (the tiny "
                          f"transformer has as many as query heads); got {m.n_kv_heads} with arch {m.arch!r}")
    if m.n_kv_heads and n_heads % m.n_kv_heads:
        raise ConfigError(f"model.n_kv_heads: {m.n_kv_heads} does not divide n_heads {n_heads}")
    if m.arch == "llama" and (m.d_model // n_heads) % 2:
        raise ConfigError(f"model.n_heads: {n_heads} heads of model.d_model {m.d_model} give an odd head size "
                          f"({m.d_model // n_heads}); RoPE rotates pairs of dimensions, so it must be even")
    if d.source == "dir" and not d.path:
        raise ConfigError("data.path: data.source = 'dir' needs a directory of train/valid/test text")


def default_heads(model: ModelConfig) -> int:
    if model.arch == "llama":
        return max(1, model.d_model // 64)
    return max(1, model.d_model // 32)


def expand(raw: dict) -> list[RunSpec]:
    """Every combination of the sweep axes, times the repetitions; validated, in run order."""
    axes = _axes(raw)
    keys = [key for key, _ in axes]
    runs = []
    for combo in itertools.product(*(values for _, values in axes)):
        point = dict(zip(keys, combo))
        config = _build(raw, point)
        validate(config)
        labels = [_label(key, point, config) for key in point]
        reps = config.sweep.repetitions
        for rep in range(reps):
            seed = config.train.seed if reps == 1 else repetition_seed(config.train.seed, rep)
            cfg = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
            parts = labels + ([f"rep{rep}"] if reps > 1 else [])
            runs.append(RunSpec(run_id=path_part("-".join(parts) or config.name), config=cfg, repetition=rep))
    first: dict[str, int] = {}
    for i, run in enumerate(runs):
        j = first.setdefault(run.run_id, i)
        if j != i:
            raise ConfigError(f"runs {j} and {i} of the sweep are both labelled {run.run_id!r}: a sweep axis repeats a "
                              "value (e.g. train.tokens = [2048, 2048]), or two [[model]] names differ only in "
                              f"characters a directory name cannot hold (becoming '_'); allowed in names: {NAME_RULE}")
    runs = [dataclasses.replace(r, run_id=f"{i:03d}-{r.run_id}"[:100]) for i, r in enumerate(runs)]
    if runs and runs[0].config.sweep.order == "random":
        random.Random(runs[0].config.sweep.seed).shuffle(runs)
    return runs


def repetition_seed(base_seed: int, repetition: int) -> int:
    """A repetition's seed: fixed by (base seed, index), independent of run order and sweep size."""
    return random.Random(base_seed * 1_000_003 + repetition).randrange(2**31)


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)
