"""Hugging Face checkpoints in and out: a Llama directory (config.json + safetensors, one file or sharded
with model.safetensors.index.json, as TinyLlama ships) to jaxscale's Llama parameters and back, and the
tiny transformer out as GPT-2.

jaxscale's Llama computes what transformers' LlamaForCausalLM computes (rotate-half RoPE, so q and k need
no permutation); only the layouts differ: a torch Linear's weight is [out, in], a jaxscale kernel is
[in, out] with the head axes split out, so every matrix is transposed and reshaped.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy, so safetensors' numpy API reads bf16 checkpoints
import numpy as np

from jaxscale.config import Config, ConfigError, ModelConfig
from jaxscale.models import abstract_params
from jaxscale.models.common import SCANNED, heads

INDEX = "model.safetensors.index.json"
INT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size")
_EMBEDS = {"tok_embed": "model.embed_tokens.weight", "lm_head": "lm_head.weight", "norm/scale": "model.norm.weight"}
_BLOCK = {  # jaxscale block parameter -> the HF tensor of layer i
    "attn_norm/scale": "input_layernorm.weight", "mlp_norm/scale": "post_attention_layernorm.weight",
    "attn/q/kernel": "self_attn.q_proj.weight", "attn/k/kernel": "self_attn.k_proj.weight",
    "attn/v/kernel": "self_attn.v_proj.weight", "attn/o/kernel": "self_attn.o_proj.weight",
    "mlp/gate/kernel": "mlp.gate_proj.weight", "mlp/up/kernel": "mlp.up_proj.weight",
    "mlp/down/kernel": "mlp.down_proj.weight",
}


def llama_names(n_layers: int) -> dict[str, str]:
    """jaxscale parameter path (unrolled layout, '/'-joined) -> HF tensor name."""
    names = dict(_EMBEDS)
    for i in range(n_layers):
        names.update({f"block_{i}/{k}": f"model.layers.{i}.{v}" for k, v in _BLOCK.items()})
    return names


def _kept(path: str, ndim: int) -> bool:
    """Embeddings ([vocab, d] on both sides) and norm scales keep their layout; kernels are transposed."""
    return path in ("tok_embed", "lm_head") or ndim == 1


def hf_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor's shape for a jaxscale parameter's: kernels [*in, *out] are weights [out, in]."""
    if _kept(path, len(shape)):
        return tuple(shape)
    n_in = 2 if path.endswith("attn/o/kernel") else 1
    return math.prod(shape[n_in:]), math.prod(shape[:n_in])


def to_hf(path: str, x: np.ndarray) -> np.ndarray:
    return x if _kept(path, x.ndim) else x.reshape(hf_shape(path, x.shape)[::-1]).T


def from_hf(path: str, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of to_hf, into the jaxscale parameter's shape."""
    return w.reshape(shape) if _kept(path, w.ndim) else w.T.reshape(shape)


def flatten(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}/") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def unflatten(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def stack(params: dict, n_layers: int) -> dict:
    """Unrolled (block_0 ...) -> the scanned layout, in numpy (the device never holds a second copy)."""
    rest = {k: v for k, v in params.items() if not k.startswith("block_")}
    blocks = [params[f"block_{i}"] for i in range(n_layers)]
    return {**rest, SCANNED: jax.tree.map(lambda *layers: np.stack(layers), *blocks)}


def unstack(params: dict) -> dict:
    if SCANNED not in params:
        return params
    n_layers = jax.tree.leaves(params[SCANNED])[0].shape[0]
    rest = {k: v for k, v in params.items() if k != SCANNED}
    return {**rest, **{f"block_{i}": jax.tree.map(lambda x, i=i: x[i], params[SCANNED]) for i in range(n_layers)}}


# -- import --------------------------------------------------------------------------------------------

def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise ConfigError(f"model.init_from: {path} not found (expected a Hugging Face Llama directory)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"model.init_from: {path} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"model.init_from: {path} is not a model config (a JSON object of keys)")
    wrong = [k for k in INT_KEYS if k in config and config[k] is not None and type(config[k]) is not int]
    if wrong:
        raise ConfigError(f"model.init_from: {path}: {wrong[0]} = {json.dumps(config[wrong[0]])} is not an integer")
    return config


def _read(path: Path):
    """A safetensors file, read lazily through numpy (safetensors loads only for runs that start from a checkpoint)."""
    from safetensors import safe_open

    return safe_open(path, framework="np")


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header."""
    try:
        with _read(path) as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) for a damaged file
        raise ConfigError(f"model.init_from: {path} is not a readable safetensors file ({err})") from None


def tensor_files(directory: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it."""
    index = directory / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            return {name: directory / file for name, file in weight_map.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"model.init_from: {index} is not a safetensors index (JSON with a weight_map of "
                              "tensor name -> file)") from None
    single = directory / "model.safetensors"
    if not single.is_file():
        raise ConfigError(f"model.init_from: {directory} has neither model.safetensors nor {INDEX}")
    return dict.fromkeys(tensor_shapes(single), single)


def _rope(hf: dict) -> tuple[float, object]:
    """(rope_theta, the scaling if any): transformers 5 writes rope_parameters, older versions rope_theta."""
    params = hf.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10_000.0))
    scaling = hf.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    return float(theta), scaling


def check_compatible(config: Config, vocab_size: int) -> None:
    """model.init_from's checkpoint has exactly the run's Llama shape and nothing jaxscale's Llama lacks;
    else a ConfigError naming the key. Reads config.json and the safetensors headers, no weights."""
    m = config.model
    if m.arch != "llama":
        raise ConfigError(f"model.init_from: needs model.arch = 'llama', got {m.arch!r}")
    directory = Path(m.init_from)
    ckpt = read_config(directory)
    where = f"model.init_from: {directory / 'config.json'}"
    theta, scaling = _rope(ckpt)
    refused = {"model_type": (ckpt.get("model_type"), "llama"), "hidden_act": (ckpt.get("hidden_act", "silu"), "silu"),
               "attention_bias": (ckpt.get("attention_bias", False), False),
               "mlp_bias": (ckpt.get("mlp_bias", False), False),
               "rope_scaling": (scaling, None)}
    for key, (value, supported) in refused.items():
        if value != supported:
            raise ConfigError(f"{where}: {key} = {json.dumps(value)} is not supported (jaxscale's Llama has "
                              f"{json.dumps(supported)})")
    n_heads = ckpt.get("num_attention_heads")
    head_dim = ckpt.get("head_dim") or (ckpt.get("hidden_size", 0) // (n_heads or 1))
    if head_dim * (n_heads or 0) != ckpt.get("hidden_size"):
        raise ConfigError(f"{where}: head_dim = {head_dim} is not supported (jaxscale's Llama has head_dim = "
                          f"hidden_size / num_attention_heads)")
    expected = {"hidden_size": ("model.d_model", m.d_model), "intermediate_size": ("model.d_mlp", m.d_mlp),
                "num_hidden_layers": ("model.n_layers", m.n_layers), "num_attention_heads": ("model.n_heads", heads(m)),
                "num_key_value_heads": ("model.n_kv_heads", m.n_kv_heads or heads(m)),
                "vocab_size": ("the tokenizer's vocabulary", vocab_size),
                "rope_theta": ("model.rope_theta", m.rope_theta), "rms_norm_eps": ("model.norm_eps", m.norm_eps),
                "tie_word_embeddings": ("jaxscale's untied Llama", False)}
    found = {**ckpt, "rope_theta": theta, "num_key_value_heads": ckpt.get("num_key_value_heads") or n_heads,
             "tie_word_embeddings": ckpt.get("tie_word_embeddings", False),
             "rms_norm_eps": ckpt.get("rms_norm_eps", 1e-6)}  # transformers' defaults where a key is absent
    for key, (ours, value) in expected.items():
        if found.get(key) != value:
            raise ConfigError(f"{where}: {key} = {json.dumps(found.get(key))} does not match {ours} = {value}")
    files = tensor_files(directory)
    shapes = {}
    for file in set(files.values()):
        shapes.update(tensor_shapes(file))
    for path, shape in expected_tensors(m, vocab_size).items():
        name, want = llama_names(m.n_layers)[path], hf_shape(path, shape)
        if name not in shapes:
            raise ConfigError(f"model.init_from: tensor {name} is missing from {directory}")
        if shapes[name] != want:
            raise ConfigError(f"model.init_from: tensor {name} in {files[name]} has shape {list(shapes[name])}, "
                              f"expected {list(want)}")


def expected_tensors(m: ModelConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """jaxscale parameter path (unrolled) -> its shape."""
    plain = dataclasses.replace(m, scan_layers=False, remat="none", attention="xla")  # the shapes only
    unrolled = abstract_params(plain, vocab_size, 8)
    return {path: tuple(x.shape) for path, x in flatten(unrolled).items()}


def load_params(m: ModelConfig, vocab_size: int) -> dict:
    """model.init_from's weights as jaxscale Llama parameters (numpy float32, in m's layout);
    check_compatible has vouched for the shapes."""
    directory = Path(m.init_from)
    files, names = tensor_files(directory), llama_names(m.n_layers)
    shapes, flat = expected_tensors(m, vocab_size), {}
    by_file: dict[Path, list[str]] = {}
    for path in shapes:
        by_file.setdefault(files[names[path]], []).append(path)
    for file, paths in by_file.items():
        with _read(file) as f:
            for path in paths:
                flat[path] = np.ascontiguousarray(from_hf(path, f.get_tensor(names[path]), shapes[path]), np.float32)
    params = unflatten(flat)
    return stack(params, m.n_layers) if m.scan_layers else params


def place(params: dict, like):
    """Host arrays placed as `like` (the fresh state's parameters) is; each process reads only its shards."""
    place_one = lambda x, ref: jax.make_array_from_callback(x.shape, ref.sharding, lambda i: x[i])  # noqa: E731
    return jax.tree.map(place_one, params, like)


# -- export --------------------------------------------------------------------------------------------

def llama_tensors(params: dict, n_layers: int) -> dict[str, np.ndarray]:
    flat = flatten(unstack(params))
    return {name: np.ascontiguousarray(to_hf(path, np.asarray(flat[path], np.float32)))
            for path, name in llama_names(n_layers).items()}


def llama_config(m: ModelConfig, vocab_size: int, seq_len: int, bos: int | None, eos: int | None) -> dict:
    n_heads = heads(m)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": m.d_model,
        "intermediate_size": m.d_mlp, "num_hidden_layers": m.n_layers, "num_attention_heads": n_heads,
        "num_key_value_heads": m.n_kv_heads or n_heads, "head_dim": m.d_model // n_heads, "hidden_act": "silu",
        "vocab_size": vocab_size, "max_position_embeddings": seq_len, "rms_norm_eps": m.norm_eps,
        # both spellings: transformers 5 reads rope_parameters, 4.x rope_theta
        "rope_theta": m.rope_theta, "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False, "torch_dtype": "float32",
        "dtype": "float32", "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": None,
    }


def gpt2_tensors(params: dict, m: ModelConfig) -> dict[str, np.ndarray]:
    """The tiny transformer as GPT-2, whose Conv1D weights are [in, out] like jaxscale's kernels."""
    d = m.d_model
    p = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    out = {"transformer.wte.weight": p["tok_embed"]["embedding"], "transformer.wpe.weight": p["pos_embed"],
           "transformer.ln_f.weight": p["ln_final"]["scale"], "transformer.ln_f.bias": p["ln_final"]["bias"]}
    if not m.tie_embeddings:
        out["lm_head.weight"] = p["lm_head"]
    for i in range(m.n_layers):
        b, pre = p[f"block_{i}"], f"transformer.h.{i}."
        out.update({
            pre + "ln_1.weight": b["ln_attn"]["scale"], pre + "ln_1.bias": b["ln_attn"]["bias"],
            pre + "attn.c_attn.weight": b["qkv"]["kernel"].reshape(d, 3 * d),  # [d, (q|k|v, heads, head_dim)]
            pre + "attn.c_attn.bias": b["qkv"]["bias"].reshape(3 * d),
            pre + "attn.c_proj.weight": b["attn_out"]["kernel"].reshape(d, d),
            pre + "attn.c_proj.bias": b["attn_out"]["bias"],
            pre + "ln_2.weight": b["ln_mlp"]["scale"], pre + "ln_2.bias": b["ln_mlp"]["bias"],
            pre + "mlp.c_fc.weight": b["mlp_in"]["kernel"], pre + "mlp.c_fc.bias": b["mlp_in"]["bias"],
            pre + "mlp.c_proj.weight": b["mlp_out"]["kernel"], pre + "mlp.c_proj.bias": b["mlp_out"]["bias"],
        })
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def gpt2_config(m: ModelConfig, vocab_size: int, seq_len: int, bos: int | None, eos: int | None) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": m.d_model, "n_layer": m.n_layers,
        "n_head": heads(m), "n_inner": m.d_mlp, "n_positions": seq_len, "vocab_size": vocab_size,
        # flax's nn.gelu is the tanh approximation (approximate=True), GPT-2's gelu_new; flax LayerNorm's epsilon
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-6, "scale_attn_weights": True,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": m.tie_embeddings,
        "torch_dtype": "float32", "dtype": "float32", "bos_token_id": bos, "eos_token_id": eos,
    }
