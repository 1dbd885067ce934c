"""Hugging Face checkpoints in and out, checked against transformers itself: an exported run loads in
LlamaForCausalLM (a tiny transformer in GPT2LMHeadModel) with jaxscale's logits, export then import is
bit-identical, a checkpoint saved by transformers' save_pretrained imports with transformers' logits;
what does not fit is refused by name.
Skipped without transformers and torch (`pip install 'jaxscale[test,bench]'`)."""
import dataclasses
import json
import random
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT
from jaxscale import hf
from jaxscale.config import Config, ConfigError, ModelConfig
from jaxscale.export import main as export_main
from jaxscale.models import build_model
from jaxscale.models.llama import unstack_blocks
from jaxscale.train import main as train_main

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

SEQ = 16
LLAMA = dict(d_model=32, d_mlp=64, n_layers=2, n_heads=4, n_kv_heads=2, rope_theta=500.0, norm_eps=1e-6)
CONFIG = """
[data]
seq_len = 16
path = "{corpus}"
[tokenizer]
path = "{tokenizer}"
[model]
arch = "llama"
d_model = 32
d_mlp = 64
n_layers = 2
n_heads = 4
n_kv_heads = 2
rope_theta = 500.0
norm_eps = 1e-6
[train]
batch_size = 4
tokens = 640
lr = 3e-3
eval_tokens = 256
[checkpoint]
final = true
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small corpus, a tokenizer.json trained on it (with <|endoftext|>) and a config using both."""
    from tokenizers import ByteLevelBPETokenizer

    root = tmp_path_factory.mktemp("hf")
    words = "the a model of tokens energy scaling law train step loss run data layer head norm weight".split()
    rng = random.Random(0)
    for split, lines in (("train", 2000), ("valid", 300), ("test", 300)):
        text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) for _ in range(lines))
        (root / f"{split}.txt").write_text(text + "\n")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator((root / "train.txt").read_text().splitlines(), vocab_size=300,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save(str(root / "tokenizer.json"))
    config = root / "hf.toml"
    config.write_text(CONFIG.format(corpus=root, tokenizer=root / "tokenizer.json"))
    return root, config, bpe.get_vocab_size()


def train(config, out, *overrides):
    assert train_main(["--config", str(config), "--out", str(out), "--quiet", *overrides]) == 0
    (run_dir,) = out.glob("000-*")
    return run_dir


def checkpoint_params(run_dir):
    """The run's final parameters, read with Orbax directly (not through jaxscale.export)."""
    manager = ocp.CheckpointManager((run_dir / "checkpoints").absolute())
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return jax.tree.map(np.asarray, restored["state"]["params"])


def jax_logits(cfg, vocab, params, tokens):
    hidden, unembed = build_model(cfg, vocab, SEQ).apply({"params": params}, tokens)
    return np.asarray(hidden @ unembed.T)


def torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens)).long()).logits.numpy()


def tokens(vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (2, SEQ)).astype(np.int32)


def assert_loads_cleanly(info):
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info


@pytest.fixture(scope="module")
def llama_run(setup, tmp_path_factory):
    """A trained tiny Llama (scanned layers) and its export through the command line."""
    root, config, vocab = setup
    run_dir = train(config, tmp_path_factory.mktemp("llama") / "sweep")
    out = root / "exported"
    proc = subprocess.run([sys.executable, "-m", "jaxscale.export", str(run_dir), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return run_dir, out


def test_exported_llama_gives_jaxscale_logits_in_transformers(setup, llama_run):
    root, _, vocab = setup
    run_dir, out = llama_run
    model, info = transformers.LlamaForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    assert_loads_cleanly(info)
    cfg = ModelConfig(arch="llama", **LLAMA)
    ids = tokens(vocab)
    np.testing.assert_allclose(torch_logits(model, ids), jax_logits(cfg, vocab, checkpoint_params(run_dir), ids),
                               atol=1e-4)
    written = json.loads((out / "config.json").read_text())
    eot = transformers.PreTrainedTokenizerFast(tokenizer_file=str(root / "tokenizer.json")).convert_tokens_to_ids(
        "<|endoftext|>")
    assert (written["max_position_embeddings"], written["bos_token_id"], written["eos_token_id"]) == (SEQ, eot, eot)
    assert (out / "tokenizer.json").read_bytes() == (root / "tokenizer.json").read_bytes()
    loaded = transformers.AutoTokenizer.from_pretrained(out)
    from tokenizers import Tokenizer
    assert loaded("the model run", add_special_tokens=False).input_ids == Tokenizer.from_file(
        str(root / "tokenizer.json")).encode("the model run").ids


def test_export_then_import_is_bit_identical(setup, llama_run, tmp_path):
    _, config, vocab = setup
    run_dir, out = llama_run
    # lr = 0: the imported run's final parameters are the ones it started from
    again = train(config, tmp_path / "again", f"model.init_from={out}", "train.lr=0", "train.warmup_frac=0")
    ours, theirs = checkpoint_params(run_dir), checkpoint_params(again)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)))
    unrolled = hf.load_params(ModelConfig(arch="llama", **LLAMA, scan_layers=False, init_from=str(out)), vocab)
    for a, b in zip(jax.tree.leaves(unstack_blocks(ours)), jax.tree.leaves(unrolled)):
        assert np.array_equal(a, b)


def test_export_refuses_a_non_empty_out_dir_and_a_run_without_final_checkpoint(llama_run, tmp_path, capsys):
    run_dir, _ = llama_run
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert export_main([str(run_dir), str(busy)]) == 2
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert "not empty" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished, ignore=shutil.ignore_patterns("checkpoints"))
    assert export_main([str(unfinished), str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.final=true" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()
    for damaged in ("config.json", "summary.json"):
        copy = tmp_path / damaged
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
        (copy / damaged).write_text("{bad")
        assert export_main([str(copy), str(tmp_path / "new")]) == 2
        err = capsys.readouterr().err
        assert f"{damaged}: damaged, not valid JSON" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def hf_llama(setup, tmp_path_factory):
    """A random LlamaForCausalLM of the run's shape, saved by save_pretrained as one file, sharded, and in bf16."""
    _, _, vocab = setup
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, rope_theta=500.0,
                                      rms_norm_eps=1e-6, max_position_embeddings=SEQ)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms start at one; make every tensor's placement matter
            p.add_(0.05 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("hf-llama")
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    model.to(torch.bfloat16).save_pretrained(root / "bf16")
    assert (root / "sharded" / hf.INDEX).is_file()
    return root, vocab


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("layout", ["single", "sharded", "bf16"])
def test_save_pretrained_llama_imports_with_transformers_logits(hf_llama, layout, scan_layers):
    root, vocab = hf_llama
    cfg = ModelConfig(arch="llama", **LLAMA, scan_layers=scan_layers, init_from=str(root / layout))
    hf.check_compatible(Config(model=cfg), vocab)
    params = hf.load_params(cfg, vocab)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
    reference = transformers.LlamaForCausalLM.from_pretrained(root / layout, dtype=torch.float32,
                                                              attn_implementation="eager")
    ids = tokens(vocab, seed=1)
    np.testing.assert_allclose(jax_logits(cfg, vocab, params, ids), torch_logits(reference, ids), atol=1e-4)


def test_a_run_starts_from_the_imported_weights(setup, hf_llama, tmp_path):
    _, config, vocab = setup
    root, _ = hf_llama
    # lr = 0: the run's final parameters are the ones it started from
    run_dir = train(config, tmp_path / "sweep", f"model.init_from={root / 'sharded'}", "train.lr=0")
    params = checkpoint_params(run_dir)
    reference = transformers.LlamaForCausalLM.from_pretrained(root / "sharded", dtype=torch.float32,
                                                              attn_implementation="eager")
    ids = tokens(vocab, seed=3)
    cfg = ModelConfig(arch="llama", **LLAMA)
    np.testing.assert_allclose(jax_logits(cfg, vocab, params, ids), torch_logits(reference, ids), atol=1e-4)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["status"] == "ok"


def edited(src, dst, drop=(), **changes):
    """A copy of a checkpoint directory with config.json keys changed or dropped."""
    shutil.copytree(src, dst)
    config = {k: v for k, v in json.loads((src / "config.json").read_text()).items() if k not in drop}
    (dst / "config.json").write_text(json.dumps({**config, **changes}))
    return dst


def test_a_tinyllama_style_config_is_accepted(hf_llama, tmp_path):
    """TinyLlama's config.json (transformers 4.x): rope_theta at the top, rope_scaling null, bf16 torch_dtype."""
    root, vocab = hf_llama
    old = edited(root / "bf16", tmp_path / "old", drop=("rope_parameters", "head_dim", "dtype"), rope_theta=500.0,
                 rope_scaling=None, torch_dtype="bfloat16")
    hf.check_compatible(Config(model=ModelConfig(arch="llama", **LLAMA, init_from=str(old))), vocab)


MISMATCHES = [  # (model overrides, config.json changes, words the one-line error must hold)
    ({"d_model": 64}, {}, "hidden_size"),
    ({"d_mlp": 128}, {}, "intermediate_size"),
    ({"n_layers": 3}, {}, "num_hidden_layers"),
    ({"n_kv_heads": 4}, {}, "num_key_value_heads"),
    ({"n_heads": 2, "n_kv_heads": 1}, {}, "num_attention_heads"),
    ({"rope_theta": 10_000.0}, {}, "rope_theta"),
    ({"norm_eps": 1e-5}, {}, "rms_norm_eps"),
    ({}, {"vocab_size": 1000}, "vocab_size"),
    ({}, {"tie_word_embeddings": True}, "tie_word_embeddings"),
    ({}, {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({}, {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0}}, "rope_scaling"),
    ({}, {"attention_bias": True}, "attention_bias"),
    ({}, {"mlp_bias": True}, "mlp_bias"),
    ({}, {"head_dim": 16}, "head_dim"),
    ({}, {"hidden_act": "gelu"}, "hidden_act"),
    ({}, {"model_type": "mistral"}, "model_type"),
    ({"arch": "tiny"}, {}, "model.arch"),
]


@pytest.mark.parametrize("model, changes, words", MISMATCHES, ids=[m[2] for m in MISMATCHES])
def test_mismatches_and_unsupported_features_are_named(hf_llama, tmp_path, model, changes, words):
    root, vocab = hf_llama
    directory = edited(root / "single", tmp_path / "ckpt", **changes)
    cfg = ModelConfig(**{**dict(arch="llama", **LLAMA), **model, "init_from": str(directory)})
    with pytest.raises(ConfigError, match=words) as err:
        hf.check_compatible(Config(model=cfg), vocab)
    assert "\n" not in str(err.value)


def test_missing_and_misshapen_tensors_are_named(hf_llama, tmp_path):
    from safetensors.numpy import load_file, save_file

    root, vocab = hf_llama
    tensors = load_file(root / "single" / "model.safetensors")
    for name, change in (("model.layers.1.mlp.up_proj.weight", "drop"), ("model.norm.weight", "shape")):
        directory = tmp_path / change
        shutil.copytree(root / "single", directory)
        broken = {k: v for k, v in tensors.items() if k != name}
        if change == "shape":
            broken[name] = np.ones(7, np.float32)
        save_file(broken, directory / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
            hf.check_compatible(Config(model=ModelConfig(arch="llama", **LLAMA, init_from=str(directory))), vocab)


@pytest.mark.parametrize("overrides, changes, words", [
    (["model.d_model=64"], {}, "hidden_size = 32 does not match model.d_model = 64"),
    ([], {"attention_bias": True}, "attention_bias = true is not supported"),
])
def test_the_command_line_stops_before_writing(setup, hf_llama, tmp_path, capsys, overrides, changes, words):
    _, config, _ = setup
    root, _ = hf_llama
    directory = edited(root / "single", tmp_path / "ckpt", **changes)
    out = tmp_path / "sweep"
    assert train_main(["--config", str(config), "--out", str(out), "--quiet", f"model.init_from={directory}",
                       *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and err.startswith("error: model.init_from")
    assert not out.exists()


@pytest.mark.parametrize("tie", [True, False])
def test_tiny_transformer_exports_as_gpt2(setup, tmp_path, tie):
    _, config, vocab = setup
    run_dir = train(config, tmp_path / "sweep", "model.arch=tiny", "model.n_heads=2", "model.n_kv_heads=0",
                    f"model.tie_embeddings={str(tie).lower()}")
    assert export_main([str(run_dir), str(tmp_path / "gpt2")]) == 0
    model, info = transformers.GPT2LMHeadModel.from_pretrained(
        tmp_path / "gpt2", dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    assert_loads_cleanly(info)
    cfg = dataclasses.replace(ModelConfig(arch="tiny", d_model=32, d_mlp=64, n_layers=2, n_heads=2), tie_embeddings=tie)
    ids = tokens(vocab, seed=2)
    # 1e-5: a small trained model's MLP inputs are small, where erf- and tanh-GELU differ by ~3e-6 in the logits
    np.testing.assert_allclose(torch_logits(model, ids), jax_logits(cfg, vocab, checkpoint_params(run_dir), ids),
                               atol=1e-5)
    x = np.linspace(-8, 8, 1001, dtype=np.float32)  # so the activation is checked where the two GELUs part
    gelu = transformers.activations.ACT2FN[model.config.activation_function]
    np.testing.assert_allclose(gelu(torch.from_numpy(x)).numpy(), np.asarray(jax.nn.gelu(x)), atol=1e-6)


def test_init_from_as_a_sweep_axis_names_each_run_inside_the_sweep(tmp_path):
    from jaxscale.config import expand
    from jaxscale.sweep import run_path

    raw = {"name": "x", "model": {"arch": "llama", "init_from": ["/ckpt/a b/llama-7b", "/ckpt/llama-13b/"]}}
    ids = [spec.run_id for spec in expand(raw)]
    assert ids == ["000-init_from_ckpt_a_b_llama-7b", "001-init_from_ckpt_llama-13b"]  # a path's parts, never a path
    assert all(run_path(tmp_path, i).parent == tmp_path for i in ids)


def test_damaged_checkpoint_files_are_named(hf_llama, tmp_path):
    root, vocab = hf_llama
    heads = json.loads((root / "single" / "config.json").read_text())["num_attention_heads"]
    cases = [  # (file, its new content, what the error says)
        ("config.json", "[1, 2]", "config.json is not a model config"),
        ("config.json", None, f'num_attention_heads = "{heads}" is not an integer'),
        ("model.safetensors", "\x00\xff" * 64, "model.safetensors is not a readable safetensors file"),
        (hf.INDEX, '{"metadata": {}}', "is not a safetensors index"),
    ]
    for i, (name, content, words) in enumerate(cases):
        changes = {} if content else {"num_attention_heads": str(heads)}
        directory = edited(root / "single", tmp_path / str(i), **changes)
        if content:
            (directory / name).write_text(content)
        with pytest.raises(ConfigError, match=words) as err:
            hf.check_compatible(Config(model=ModelConfig(arch="llama", **LLAMA, init_from=str(directory))), vocab)
        assert "\n" not in str(err.value)
