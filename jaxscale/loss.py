"""Cross-entropy of the output layer, with or without materialising the full [tokens, vocab] logits.

With a 50,257-token vocabulary the logits of a 16 x 64 batch are 206 MB; writing them, reading them
for the softmax and writing their gradient dominates a small model's step. `blocked_cross_entropy`
never holds more than one tile of [token block, vocabulary block] logits, small enough to stay in
cache — the idea of "Cut Your Losses in Large-Vocabulary Language Models" (Wijmans et al., 2024):

- forward: walk the vocabulary in blocks, keeping an online log-sum-exp per token (a running max
  and a rescaled sum, as flash attention does); the target logit is a gather and a dot product.
  One matmul with the output matrix, never a [tokens, vocab] array.
- backward (custom VJP): walk the blocks again, recompute each tile's logits, turn them into
  probabilities with the saved log-sum-exp, and accumulate both gradients from the tile while it is
  in cache: dh += P @ W_b (over blocks) and dW_b = h^T P (each block's own rows). The "- onehot"
  part of softmax - onehot is applied once at the end (dh -= W[y], dW[y] -= h), not per tile.

That is four matmuls with the output matrix instead of three — the forward tile is recomputed — in
exchange for no memory traffic beyond reading W twice and writing dW once. Tiles hold a whole 16 x
64 batch (1,024 tokens) by 4,096 vocabulary rows: smaller token blocks need an inner loop that was
1.3-1.5x slower on XLA:CPU, and 1,024-row vocabulary blocks were 4-20% slower per step than 4,096 on
the Xeon of benchmarks/results/xeon/step_time.md (8,192: slower again). Within a tile the logits are
[tokens, vocab_block] row-major and the output gradient is produced as dW^T blocks [d, vocab_block]
(h^T @ P): on XLA:CPU that contraction ran ~1.6x (d 128) to 2.5x (d 16) faster than P^T @ h. W is
read in place (dynamic slices) and dW written in place: no copy or page-faulted temporary of [V, d]
per block. Everything accumulates in float32 whatever the compute dtype.

`stored_cross_entropy` trades the recompute for memory: its forward pass keeps each tile's
exp(logits - running max) — as many bytes as the full logits — and its backward pass feeds them
straight to the two gradient matmuls, the per-token softmax normaliser riding on the small
operands. Three matmuls; the forward pass still reads each tile for its max, exp and sum, the
backward pass reads it only in its two matmuls (no elementwise pass, unlike the plain logits' softmax
gradient).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


TILE_LOGITS = 4 << 20  # logits per tile (16 MB in float32): the vocabulary block is sized from it
MAX_STORED_TILES = 64  # the stored loss unrolls its tiles: a bound on the program's size
MIN_TOKEN_BLOCK = 1024  # tile rows of fewer tokens were slower on XLA:CPU (the inner token loop)
# train.loss = "auto" stores the tiles when recomputing them would cost more than keeping them: the
# recompute costs 2 d FLOPs per logit, keeping costs 8 bytes of memory traffic per logit, and where the
# two cross depends on the CPU. On the 2-core AMD EPYC (Zen 5) of benchmarks/results/step_time.md the
# stored tiles won at every tiny-grid width (alternating runs, ms per step, stored vs blocked: d 16
# 47-49 vs 50-74, d 24 50-54 vs 69-79, d 32 68-73 vs 86-88, d 96 147 vs 203); on the 2-core Xeon of
# benchmarks/results/xeon/step_time.md the two tied around d 24-32 and the blocked loss won at d 16
# (-5%). Below d 16 (unmeasured) recomputing a tile is cheaper still, so it is recomputed.
# Either way only when freed host memory is kept (jaxscale.hostmem, as the CLI sets it): without it,
# page-faulting 206 MB of fresh tiles every step costs more than the recompute. Above STORED_MAX_BYTES
# (e.g. a Llama's long batches) the blocked loss always runs.
STORED_MIN_D = 16
STORED_MAX_BYTES = 256 << 20
GPU_FULL_LOGITS_SHARE = 16  # full logits on a GPU when they take at most 1/16 of its memory


def cross_entropy(hidden, unembed, targets, mode: str = "auto", chunk: int = 128):
    """Mean next-token loss. hidden [..., d], unembed [V, d], targets [...] int.
    mode "full": the plain logits (also the reference); "blocked": tiles of max(chunk, MIN_TOKEN_BLOCK)
    tokens (all of them when fewer) x a vocabulary block, recomputed in the backward pass; "stored":
    all tokens x a vocabulary block, kept for the backward pass; "auto" (unresolved): "blocked"."""
    h = hidden.reshape(-1, hidden.shape[-1])
    y = targets.reshape(-1)
    if mode == "auto":  # not resolved for a device (jaxscale.runtime.resolve): the loss that runs anywhere
        mode = "blocked"
    if mode == "full":
        return plain_cross_entropy(h, unembed, y)
    if mode == "stored":
        return stored_cross_entropy(h, unembed, y, stored_vocab_block(h.shape[0], unembed.shape[0]))
    token_block = min(max(chunk, MIN_TOKEN_BLOCK), h.shape[0])
    return blocked_cross_entropy(h, unembed, y, token_block, vocab_block_for(token_block, unembed.shape[0]))


def choose_loss(tokens: int, vocab: int, d_model: int, platform: str, freed_memory_reused: bool,
                memory_bytes: int = 0) -> str:
    """train.loss = "auto" for `tokens` tokens a device (jaxscale.runtime.resolve calls this once).
    On a GPU: the full logits when they and their gradient (8 bytes a logit) take at most 1/16 of the device's
    memory — one fused matmul each way, nothing recomputed — else the blocked loss. On the CPU: the stored
    tiles when they are worth keeping (see STORED_MIN_D), else the blocked loss."""
    if platform != "cpu":
        fits = memory_bytes > 0 and 8 * tokens * vocab <= memory_bytes // GPU_FULL_LOGITS_SHARE
        return "full" if fits else "blocked"
    small = 4 * tokens * vocab <= STORED_MAX_BYTES
    return "stored" if d_model >= STORED_MIN_D and small and freed_memory_reused else "blocked"


def stored_vocab_block(tokens: int, vocab: int) -> int:
    """The stored loss's tile width: as the blocked loss's, but at most MAX_STORED_TILES tiles (it is unrolled)."""
    return max(vocab_block_for(tokens, vocab), -(-vocab // MAX_STORED_TILES))


def vocab_block_for(token_block: int, vocab: int) -> int:
    """A power of two in [256, 8192] with token_block x vocab_block ~ TILE_LOGITS, at most the vocabulary."""
    block = max(256, min(8192, TILE_LOGITS // max(token_block, 1)))
    block = 1 << (block.bit_length() - 1)
    return min(block, vocab)


def plain_cross_entropy(h, unembed, y):
    logits = float32_logits(h, unembed)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    return jnp.mean(lse - target)


@jax.custom_vjp
def float32_logits(h, w):
    """h [n, d] @ W^T [V, d] with float32 logits from operands in the compute dtype. Its backward pass casts the
    logits' gradient to the operands' dtype before the two matmuls, as PyTorch's autocast does: left to autodiff,
    a float32 cotangent upcasts h and W and both [n, V] x d matmuls run in float32 (TF32 on a GPU, at half the
    bf16 rate, reading twice the bytes)."""
    return jnp.einsum("nd,vd->nv", h, w, preferred_element_type=jnp.float32)


def _float32_logits_fwd(h, w):
    return float32_logits(h, w), (h, w)


def _float32_logits_bwd(residuals, g):
    h, w = residuals
    g = g.astype(h.dtype)
    dh = jnp.einsum("nv,vd->nd", g, w, preferred_element_type=jnp.float32)
    dw = jnp.einsum("nv,nd->vd", g, h, preferred_element_type=jnp.float32)
    return dh.astype(h.dtype), dw.astype(w.dtype)


float32_logits.defvjp(_float32_logits_fwd, _float32_logits_bwd)


# --- the blocked loss -------------------------------------------------------------------------


def _token_blocks(x, token_block):
    return x.reshape(x.shape[0] // token_block, token_block, *x.shape[1:])


def _zeros_like(ref, shape=None):
    """float32 zeros broadcast from `ref` * 0: they inherit its sharding and the shard_map axes it varies
    over, as a scan carry must (jnp.zeros_like does not carry the latter)."""
    z = (ref * 0).astype(jnp.float32)
    return z if shape is None else jnp.broadcast_to(z.reshape(-1)[0], shape)


def _logits(h, wb):
    return jnp.einsum("...td,vd->...tv", h, wb, preferred_element_type=jnp.float32)


def _walk_vocabulary(w, vocab_block, fn, carry):
    """carry = fn(carry, W_b, start) for every block of vocab_block rows of W, read in place (dynamic
    slices, no copy of W). When vocab_block does not divide V, the rows left over are one last,
    narrower block (its own static shape, outside the loop): no wasted columns."""
    v = w.shape[0]
    n = v // vocab_block

    def body(c, i):
        start = i * vocab_block
        return fn(c, lax.dynamic_slice_in_dim(w, start, vocab_block), start), None

    carry = lax.scan(body, carry, jnp.arange(n, dtype=jnp.int32))[0]
    if v % vocab_block:
        carry = fn(carry, w[n * vocab_block:], n * vocab_block)
    return carry


def _online_softmax_step(logits, m, s):
    """One vocabulary block of an online log-sum-exp (as flash attention keeps it): the new running
    max m and rescaled sum s, and the block's exp(logits - m)."""
    m_new = jnp.maximum(m, logits.max(-1))
    e = jnp.exp(logits - m_new[..., None])
    return e, m_new, s * jnp.exp(m - m_new) + e.sum(-1)


def _target_logits(h, w, y):
    """h_i . W[y_i] for every token: the logit of its target, by a gather and a dot product."""
    return jnp.einsum("nd,nd->n", h, w[y], preferred_element_type=jnp.float32)


def _log_sum_exp(h, w, token_block, vocab_block):
    """Per-token log-sum-exp over the whole vocabulary, one vocabulary block at a time."""
    hb = _token_blocks(h, token_block)  # [k, t, d]
    if hb.shape[0] == 1:
        hb = h  # one token block: plain 2-D tiles (a batched dot of one is slower on XLA:CPU)

    def update(carry, wb, start):
        _, m, s = _online_softmax_step(_logits(hb, wb), *carry)  # logits [k, t, v] or [t, v]
        return m, s

    zero = _zeros_like(hb[..., 0])
    m, s = _walk_vocabulary(w, vocab_block, update, (zero - jnp.inf, zero))
    return (m + jnp.log(s)).reshape(-1)


def _gradients(h, w, y, lse, scale, token_block, vocab_block):
    """scale x (d loss_sum / dh, d loss_sum / dW), dW accumulated in place block by block."""
    n, d = h.shape
    hb, lb = _token_blocks(h, token_block), _token_blocks(lse, token_block)
    # the scale rides on h in dW = (s h)^T P (no pass over dW for it), multiplied in float32: a bf16 1/n would
    # scale the whole gradient by bf16(1/n)·n (up to ±0.2%), where per-element rounding averages out
    hs = (hb.astype(jnp.float32) * scale).astype(h.dtype)

    def tile(h_t, hs_t, lse_t, wb):  # -> (P @ W_b [t, d], (s h)^T @ P [d, v])
        p = jnp.exp(_logits(h_t, wb) - lse_t[:, None]).astype(w.dtype)
        dh = jnp.einsum("tv,vd->td", p, wb, preferred_element_type=jnp.float32)
        dwt = jnp.einsum("td,tv->dv", hs_t, p, preferred_element_type=jnp.float32)
        return dh, dwt

    def block(carry, wb, start):
        dh, dw = carry  # dh [k, t, d] over all vocabulary blocks; dW [V, d] written block by block
        if hb.shape[0] == 1:
            dh_b, dwt = tile(hb[0], hs[0], lb[0], wb)
            dh = dh + dh_b[None]
        else:
            def over_tokens(dwt, xs):
                h_t, hs_t, lse_t, dh_t = xs
                dh_b, dwt_b = tile(h_t, hs_t, lse_t, wb)
                return dwt + dwt_b, dh_t + dh_b

            dwt, dh = lax.scan(over_tokens, _zeros_like(hb, (d, wb.shape[0])), (hb, hs, lb, dh))
        # the barrier keeps XLA from folding this small transpose into the dot as P^T @ (s h), which
        # ran 1.5-2.5x slower than (s h)^T @ P on XLA:CPU
        dw_b = lax.optimization_barrier(dwt).T.astype(dw.dtype)
        return dh, lax.dynamic_update_slice_in_dim(dw, dw_b, start, axis=0)

    dw0 = jnp.zeros(w.shape, jnp.float32)
    dh, dw = _walk_vocabulary(w, vocab_block, block, (_zeros_like(hb), dw0))
    dh = (dh.reshape(n, d) - w[y].astype(jnp.float32)) * scale  # the "- onehot" of softmax - onehot
    dw = dw.at[y].add(-hs.reshape(n, d).astype(jnp.float32))
    return dh, dw


def _pad_tokens(h, y, token_block):
    """Zero rows up to a multiple of token_block: a zero row adds nothing to dW and is masked from the loss."""
    pad = -h.shape[0] % token_block
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        y = jnp.pad(y, (0, pad))
    return h, y, pad


def _forward(h, w, y, token_block, vocab_block):
    n = h.shape[0]
    hp, yp, pad = _pad_tokens(h, y, token_block)
    lse = _log_sum_exp(hp, w, token_block, vocab_block)[:n]
    return jnp.mean(lse - _target_logits(h, w, y)), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def blocked_cross_entropy(h, w, y, token_block: int, vocab_block: int):
    """Mean loss of h [n, d] against W [V, d] and targets y [n], in tiles of token_block x vocab_block."""
    return _forward(h, w, y, token_block, vocab_block)[0]


def _blocked_fwd(h, w, y, token_block, vocab_block):
    loss, lse = _forward(h, w, y, token_block, vocab_block)
    return loss, (h, w, y, lse)


def _blocked_bwd(token_block, vocab_block, residuals, g):
    h, w, y, lse = residuals
    n = h.shape[0]
    hp, yp, pad = _pad_tokens(h, y, token_block)
    lse_p = jnp.pad(lse, (0, pad)) if pad else lse
    dh, dw = _gradients(hp, w, yp, lse_p, (g / n).astype(jnp.float32), token_block, vocab_block)
    # padded rows: zero h, so nothing reached dW; their dh rows are dropped
    return dh[:n].astype(h.dtype), dw.astype(w.dtype), jnp.zeros(y.shape, jax.dtypes.float0)


blocked_cross_entropy.defvjp(_blocked_fwd, _blocked_bwd)


# --- the stored-tiles loss --------------------------------------------------------------------


def _stored_forward(h, w, y, vocab_block):
    """Loss and residuals: per vocabulary tile, exp(logits - running max) and that max."""
    n = h.shape[0]
    m = jnp.full((n,), -jnp.inf, jnp.float32)
    s = jnp.zeros((n,), jnp.float32)
    tiles = []
    for start in range(0, w.shape[0], vocab_block):  # unrolled: each tile its own buffer, no stacking copy
        e, m, s = _online_softmax_step(_logits(h, w[start:start + vocab_block]), m, s)
        tiles.append((e.astype(w.dtype), m))
    log_s = jnp.log(s)
    return jnp.mean(m + log_s - _target_logits(h, w, y)), (tuple(tiles), m, log_s)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def stored_cross_entropy(h, w, y, vocab_block: int):
    """Mean loss of h [n, d] against W [V, d] and targets y [n]: the forward pass keeps every
    [n, vocab_block] tile of exp(logits - m) for the backward pass, which needs no recompute."""
    return _stored_forward(h, w, y, vocab_block)[0]


def _stored_fwd(h, w, y, vocab_block):
    loss, (tiles, m, log_s) = _stored_forward(h, w, y, vocab_block)
    return loss, (h, w, y, tiles, m, log_s)


def _stored_bwd(vocab_block, residuals, g):
    """P = E_b * exp(m_b - lse) row by row: the row factor c scales the small operands of the two
    matmuls (P @ W_b = c * (E_b @ W_b), P^T h = E_b^T (c * h)), so the big tile is only read by them.
    c is exp((m_b - m) - log s), not exp(m_b - lse): m_b - m is exact, lse would round at the logits' scale."""
    h, w, y, tiles, m_last, log_s = residuals
    n, d = h.shape
    scale = (g / n).astype(jnp.float32)
    hf = h.astype(jnp.float32)
    dh = jnp.zeros((n, d), jnp.float32)
    dw_blocks = []
    for i, (e, m) in enumerate(tiles):
        wb = w[i * vocab_block:(i + 1) * vocab_block]
        c = (jnp.exp((m - m_last) - log_s) * scale)[:, None]
        dh = dh + c * jnp.einsum("nv,vd->nd", e, wb, preferred_element_type=jnp.float32)
        dwt = jnp.einsum("nd,nv->dv", (c * hf).astype(w.dtype), e, preferred_element_type=jnp.float32)
        dw_blocks.append(lax.optimization_barrier(dwt))  # (c h)^T @ E: see _gradients on the barrier
    dh = dh - w[y].astype(jnp.float32) * scale  # the "- onehot" of softmax - onehot
    # one [d, V] concatenate and one transpose: 8 ms at d 128 where a transpose per block, then the
    # concatenate of [vocab_block, d] blocks, took 13 ms
    dw = jnp.concatenate(dw_blocks, axis=1).T.at[y].add(-hf * scale)
    return dh.astype(h.dtype), dw.astype(w.dtype), jnp.zeros(y.shape, jax.dtypes.float0)


stored_cross_entropy.defvjp(_stored_fwd, _stored_bwd)
