"""The Llama: TinyLlama-1.1B's exact shape and parameter count, a forward pass checked against an
independent numpy implementation, RoPE's relative-position property, causality, remat, bf16, and the
real TinyLlama tokenizer's vocabulary feeding the output layer. The scanned layers against the unrolled
ones, and the remat policies: tests/test_scan.py."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LLAMA_TOKENIZER, ROOT, needs_shared

from jaxscale.config import ModelConfig, expand, load_raw
from jaxscale.models import build_model, count_params
from jaxscale.models import abstract_params
from jaxscale.models.llama import rope, stack_blocks

TINYLLAMA = ModelConfig(arch="llama", n_layers=22, d_model=2048, n_heads=32, n_kv_heads=4, d_mlp=5632,
                        rope_theta=10_000.0, norm_eps=1e-5, dtype="bfloat16")
SMALL = ModelConfig(arch="llama", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=48, rope_theta=1000.0)


@pytest.fixture(scope="module")
def tinyllama_shapes():
    return jax.tree.map(lambda x: x.shape, abstract_params(TINYLLAMA, 32_000, 2048))


def test_tinyllama_has_exactly_1_100_048_384_parameters():
    total, non_embedding = count_params(TINYLLAMA, 32_000, 2048)
    assert total == 1_100_048_384
    assert non_embedding == 1_100_048_384 - 2 * 32_000 * 2048  # untied: tok_embed and lm_head


def test_tinyllama_layer_shapes_match_the_published_architecture(tinyllama_shapes):
    p = tinyllama_shapes
    assert sorted(p) == ["blocks", "lm_head", "norm", "tok_embed"]  # the 22 blocks scanned: stacked on axis 0
    assert p["tok_embed"] == p["lm_head"] == (32_000, 2048)
    assert p["norm"]["scale"] == (2048,)
    attn, mlp = p["blocks"]["attn"], p["blocks"]["mlp"]
    assert attn["q"]["kernel"] == (22, 2048, 32, 64)  # 2048 -> 32 heads x 64 = 2048
    assert attn["k"]["kernel"] == attn["v"]["kernel"] == (22, 2048, 4, 64)  # 4 KV heads of 64: 2048 -> 256
    assert attn["o"]["kernel"] == (22, 32, 64, 2048)
    assert mlp["gate"]["kernel"] == mlp["up"]["kernel"] == (22, 2048, 5632)
    assert mlp["down"]["kernel"] == (22, 5632, 2048)
    assert p["blocks"]["attn_norm"]["scale"] == p["blocks"]["mlp_norm"]["scale"] == (22, 2048)
    unrolled = abstract_params(dataclasses.replace(TINYLLAMA, scan_layers=False), 32_000, 2048)
    assert jax.tree.map(lambda x: x.shape, jax.eval_shape(stack_blocks, unrolled)) == p
    biases = [path for path, _ in jax.tree_util.tree_flatten_with_path(p, is_leaf=lambda x: isinstance(x, tuple))[0]
              if "bias" in jax.tree_util.keystr(path)]
    assert biases == []


# --- an independent reference: numpy, written from the Llama paper's equations ---

def np_rmsnorm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def np_rope(x, theta):
    """x [T, heads, head_dim]; dims i and i + head_dim/2 are the real and imaginary parts of a complex
    number rotated by position * theta^(-2i / head_dim)."""
    t, _, hd = x.shape
    z = x[..., : hd // 2] + 1j * x[..., hd // 2:]
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    z = z * np.exp(1j * np.outer(np.arange(t), inv_freq))[:, None, :]
    return np.concatenate([z.real, z.imag], axis=-1)


def np_attention(q, k, v):
    """Causal softmax attention, query head h reading key/value head h // (heads / kv_heads)."""
    t, n_heads, hd = q.shape
    group = n_heads // k.shape[1]
    out = np.zeros_like(q)
    mask = np.tril(np.ones((t, t), bool))
    for h in range(n_heads):
        scores = q[:, h] @ k[:, h // group].T / np.sqrt(hd)
        scores = np.where(mask, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        out[:, h] = (probs / probs.sum(-1, keepdims=True)) @ v[:, h // group]
    return out


def np_llama(p, tokens, cfg):
    silu = lambda x: x / (1 + np.exp(-x))  # noqa: E731
    x = p["tok_embed"][tokens]
    for i in range(cfg.n_layers):
        b = p[f"block_{i}"]
        a = b["attn"]
        h = np_rmsnorm(x, b["attn_norm"]["scale"], cfg.norm_eps)
        q = np_rope(np.einsum("td,dhk->thk", h, a["q"]["kernel"]), cfg.rope_theta)
        k = np_rope(np.einsum("td,dhk->thk", h, a["k"]["kernel"]), cfg.rope_theta)
        v = np.einsum("td,dhk->thk", h, a["v"]["kernel"])
        o = a["o"]["kernel"]
        x = x + np_attention(q, k, v).reshape(len(tokens), -1) @ o.reshape(-1, o.shape[-1])
        h = np_rmsnorm(x, b["mlp_norm"]["scale"], cfg.norm_eps)
        m = b["mlp"]
        x = x + (silu(h @ m["gate"]["kernel"]) * (h @ m["up"]["kernel"])) @ m["down"]["kernel"]
    return np_rmsnorm(x, p["norm"]["scale"], cfg.norm_eps)


@pytest.fixture(scope="module")
def small():
    """The small (scanned) Llama, numpy weights of its abstract shapes (no init to compile) in the stacked
    layout, the same weights unrolled as the numpy reference reads them, and its jitted forward."""
    model = build_model(SMALL, 50, 8)
    tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, 50)
    rng = np.random.default_rng(0)

    def weight(path, x):  # norm scales away from 1 and large kernels: attention far from uniform
        if "scale" in jax.tree_util.keystr(path):
            return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
        return rng.normal(0, 0.3, x.shape).astype(np.float32)

    shapes = abstract_params(dataclasses.replace(SMALL, scan_layers=False), 50, 8)
    unrolled = jax.tree_util.tree_map_with_path(weight, shapes)
    return model, stack_blocks(unrolled), unrolled, tokens, jax.jit(model.apply)


def test_forward_matches_an_independent_numpy_llama(small):
    model, params, unrolled, tokens, apply = small
    hidden, unembed = apply({"params": params}, tokens)
    for row in range(tokens.shape[0]):
        expected = np_llama(jax.tree.map(lambda x: x.astype(np.float64), unrolled), np.asarray(tokens[row]), SMALL)
        np.testing.assert_allclose(np.asarray(hidden[row]), expected, rtol=2e-4, atol=2e-4)
    np.testing.assert_array_equal(np.asarray(unembed), params["lm_head"])


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 1, 1, 1, 16))
    t = 12
    rq = np.asarray(rope(jnp.asarray(np.broadcast_to(q, (1, t, 1, 16)), jnp.float32), 10_000.0))[0, :, 0]
    rk = np.asarray(rope(jnp.asarray(np.broadcast_to(k, (1, t, 1, 16)), jnp.float32), 10_000.0))[0, :, 0]
    scores = rq @ rk.T  # scores[m, n] = <R_m q, R_n k> = <q, R_{n-m} k>
    for shift in range(1, 4):
        np.testing.assert_allclose(scores[shift:, shift:], scores[:-shift, :-shift], rtol=1e-4, atol=1e-4)
    assert not np.allclose(scores[0, 0], scores[0, 5])  # ... and it does depend on it
    np.testing.assert_allclose(rq[0], q.reshape(16), rtol=1e-6)  # position 0 is not rotated


def recomputed_primitives(jaxpr, inside=False) -> set[str]:
    """The primitives under a checkpoint (remat) anywhere in `jaxpr`, scan bodies included."""
    found = set()
    for eqn in jaxpr.eqns:
        here = inside or eqn.primitive.name.startswith(("checkpoint", "remat"))  # remat2 today
        if inside:
            found.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    found |= recomputed_primitives(sub, here)
    return found


def test_causal_and_remat_and_bf16(small):
    model, params, unrolled, tokens, apply = small
    changed = tokens.at[0, 5].set((tokens[0, 5] + 1) % 50)
    h1, _ = apply({"params": params}, tokens)
    h2, _ = apply({"params": params}, changed)
    np.testing.assert_array_equal(h1[0, :5], h2[0, :5])
    assert not np.allclose(h1[0, 5:], h2[0, 5:])

    for scan, p in ((True, params), (False, unrolled)):  # remat is applied (its gradients: tests/test_scan.py)
        for policy in ("none", "full"):
            remat = build_model(dataclasses.replace(SMALL, scan_layers=scan, remat=policy), 50, 8)
            jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(remat.apply({"params": p}, tokens)[0])))(p).jaxpr
            assert ("dot_general" in recomputed_primitives(jaxpr)) == (policy == "full")  # norms, SwiGLU: always

    bf16 = build_model(dataclasses.replace(SMALL, dtype="bfloat16"), 50, 8)
    hidden, unembed = jax.jit(bf16.apply)({"params": params}, tokens)
    assert hidden.dtype == unembed.dtype == jnp.bfloat16
    assert {x.dtype for x in jax.tree.leaves(abstract_params(bf16.cfg, 50, 8))} == {np.dtype("float32")}  # master weights
    error = np.linalg.norm(np.asarray(hidden, np.float32) - np.asarray(h1)) / np.linalg.norm(np.asarray(h1))
    assert error < 0.05  # bf16 rounding (2^-8 relative a step), not a different function


@needs_shared(LLAMA_TOKENIZER)
def test_the_study_config_and_the_real_tokenizer_make_a_32000_row_output_layer(tinyllama_shapes):
    import sentencepiece as spm

    from jaxscale.plan import vocab_size

    sp = spm.SentencePieceProcessor(model_file=str(LLAMA_TOKENIZER))
    assert sp.encode("Hello world") == [15043, 3186]
    runs = expand(load_raw(ROOT / "configs" / "tinyllama_tokens.toml", [f"tokenizer.path={LLAMA_TOKENIZER}"]))
    assert len(runs) == 3 * 50
    assert sorted({r.config.train.tokens for r in runs}) == [500_000, 1_000_000, 2_000_000]
    config = runs[0].config
    assert config.model == dataclasses.replace(TINYLLAMA, name="tinyllama-1.1b") and config.data.seq_len == 2048
    assert vocab_size(config) == sp.get_piece_size() == 32_000
    shapes = jax.tree.map(lambda x: x.shape, abstract_params(config.model, vocab_size(config), config.data.seq_len))
    assert shapes == tinyllama_shapes and shapes["lm_head"] == (32_000, 2048)


def test_the_cpu_twin_validates():
    runs = expand(load_raw(ROOT / "configs" / "tinyllama_tokens_cpu.toml"))
    assert sorted({r.config.train.tokens for r in runs}) == [500_000, 1_000_000, 2_000_000]
    assert runs[0].config.model.arch == "llama" and runs[0].config.model.n_kv_heads == 2
