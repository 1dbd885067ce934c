"""`python -m jaxscale.export RUN_DIR OUT_DIR`: a finished run as a Hugging Face model directory.

A Llama becomes what `transformers.LlamaForCausalLM.from_pretrained(OUT_DIR)` loads, the tiny transformer
a GPT2LMHeadModel (learned positions, LayerNorm, tanh-GELU MLP: the same function). The weights come
from the run's final checkpoint (train with checkpoint.final=true), in float32; the run's tokenizer is
copied when it is a file (tokenizer.path), not when it is the BPE trained for the run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import typing
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import save_file

from jaxscale import hf
from jaxscale.config import SECTIONS, Config, ConfigError
from jaxscale.models import abstract_params

BOS = ("<s>", "<|begin_of_text|>", "<|endoftext|>")
EOS = ("</s>", "<|end_of_text|>", "<|endoftext|>")


def read_object(path: Path) -> dict:
    """A JSON object the run wrote (config.json, summary.json); a ConfigError naming the file if it is damaged."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: damaged, not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: damaged, not a JSON object")
    return value


def run_config(run_dir: Path) -> Config:
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no config.json; expected a run directory (e.g. runs/NAME/000-...)")
    raw = read_object(path)
    types = typing.get_type_hints(Config)
    try:
        return Config(name=raw["name"], **{s: types[s](**raw[s]) for s in SECTIONS})
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not a jaxscale run config ({err})") from None


def final_params(run_dir: Path, config: Config) -> tuple[dict, int]:
    """(parameters as numpy arrays, vocabulary size) from the run's final checkpoint."""
    import orbax.checkpoint as ocp

    summary_path = run_dir / "summary.json"
    summary = read_object(summary_path) if summary_path.is_file() else {}
    step_dir = run_dir / "checkpoints" / str(summary.get("steps", "final"))
    if summary.get("status") != "ok" or not (step_dir / "state").is_dir():
        raise ConfigError(f"{run_dir}: no final checkpoint ({step_dir.relative_to(run_dir)}); "
                          "train the run to its end with checkpoint.final=true")
    vocab = summary["vocab_size"]
    shapes_only = dataclasses.replace(config.model, attention="xla", remat="none")  # a GPU run's cudnn traces here too
    abstract = abstract_params(shapes_only, vocab, config.data.seq_len)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
    with ocp.PyTreeCheckpointer() as checkpointer:
        state = checkpointer.restore((step_dir / "state").absolute(), args=ocp.args.PyTreeRestore(
            item={"params": abstract}, restore_args={"params": restore_args}, partial_restore=True))
    return state["params"], vocab


def tokenizer_files(config: Config) -> tuple[dict[str, Path], int | None, int | None]:
    """({name in OUT_DIR: the run's file}, bos id, eos id); ids None where the tokenizer names none."""
    path = Path(config.tokenizer.path)
    if not config.tokenizer.path or not path.is_file():
        return {}, None, None
    if path.suffix == ".model":
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=str(path))
        return {"tokenizer.model": path}, (sp.bos_id() if sp.bos_id() >= 0 else None), \
            (sp.eos_id() if sp.eos_id() >= 0 else None)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(path))
    ids = lambda names: [tok.token_to_id(t) for t in names if tok.token_to_id(t) is not None]  # noqa: E731
    return {"tokenizer.json": path}, next(iter(ids(BOS)), None), next(iter(ids(EOS)), None)


def export(run_dir: Path, out_dir: Path) -> str:
    """Write the HF directory; returns the architecture written."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir} exists and is not empty; give a new or empty OUT_DIR")
    config = run_config(run_dir)
    m, seq_len = config.model, config.data.seq_len
    if m.arch not in ("llama", "tiny"):
        raise ConfigError(f"model.arch {m.arch!r}: only llama (as Llama) and tiny (as GPT-2) export")
    params, vocab = final_params(run_dir, config)
    files, bos, eos = tokenizer_files(config)
    if m.arch == "llama":
        tensors, hf_config = hf.llama_tensors(params, m.n_layers), hf.llama_config(m, vocab, seq_len, bos, eos)
    else:
        tensors, hf_config = hf.gpt2_tensors(params, m), hf.gpt2_config(m, vocab, seq_len, bos, eos)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private
    try:  # written aside, then moved into place: an interrupted export leaves no half directory
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        save_file(tensors, staging / "model.safetensors", metadata={"format": "pt"})
        for name, source in files.items():
            shutil.copyfile(source, staging / name)
        if "tokenizer.json" in files:
            (staging / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return hf_config["architectures"][0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxscale.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory of a sweep, e.g. runs/NAME/000-d64-l2")
    parser.add_argument("out_dir", type=Path, help="new (or empty) directory for the Hugging Face model")
    args = parser.parse_args(argv)
    try:
        arch = export(args.run_dir, args.out_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out_dir}: {arch} (transformers' from_pretrained loads it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
