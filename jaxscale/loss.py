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
exchange for no memory traffic beyond reading W twice and writing dW once. Tiles hold a whole
16 x 64 batch (1,024 tokens) by 1,024 vocabulary rows: smaller token blocks need an inner loop that
was 1.3-1.5x slower on XLA:CPU. Within a tile the logits are [tokens, vocab_block] row-major and
the output gradient is produced as dW^T blocks [d, vocab_block] (h^T @ P): on XLA:CPU that
contraction ran ~1.6x (d 128) to 2.5x (d 16) faster than P^T @ h. W is read in place (dynamic
slices) and dW written in place: no copy or page-faulted temporary of [V, d] per block. Everything
accumulates in float32 whatever the compute dtype.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxscale import hostmem

TILE_LOGITS = 1 << 20  # logits per tile (4 MB in float32): the vocabulary block is sized from it
MIN_TOKEN_BLOCK = 1024  # tile rows of fewer tokens were slower on XLA:CPU (the inner token loop)
# train.loss = "auto" keeps all logits when recomputing them would cost more than storing them:
# the recompute costs 2 d FLOPs per logit, storing costs 8 bytes of memory traffic per logit. On
# the 2-core CPU of benchmarks/results/step_time.md the blocked loss won below d_model 64 and the
# full logits above it (-8% to -19% per step at d 96-128) — provided freed host memory is kept
# (jaxscale.hostmem, as the CLI sets it): without it, page-faulting 206 MB of fresh logits every
# step makes the full logits the slower choice. Above FULL_LOGITS_MAX_BYTES (e.g. a Llama's long
# batches) the tiles always win.
FULL_LOGITS_MIN_D = 64
FULL_LOGITS_MAX_BYTES = 256 << 20


def cross_entropy(hidden, unembed, targets, mode: str = "auto", chunk: int = 128):
    """Mean next-token loss. hidden [..., d], unembed [V, d], targets [...] int.
    mode "full": the plain logits (also the reference); "blocked": tiles of max(chunk, MIN_TOKEN_BLOCK)
    tokens (all of them when fewer) x a vocabulary block; "auto": `loss_mode` picks by shape."""
    h = hidden.reshape(-1, hidden.shape[-1])
    y = targets.reshape(-1)
    if mode == "auto":
        mode = loss_mode(h.shape[0], *unembed.shape)
    if mode == "full":
        return plain_cross_entropy(h, unembed, y)
    token_block = min(max(chunk, MIN_TOKEN_BLOCK), h.shape[0])
    return blocked_cross_entropy(h, unembed, y, token_block, vocab_block_for(token_block, unembed.shape[0]))


def loss_mode(tokens: int, vocab: int, d_model: int) -> str:
    """"full" or "blocked" for train.loss = "auto" (see FULL_LOGITS_MIN_D)."""
    small = 4 * tokens * vocab <= FULL_LOGITS_MAX_BYTES
    reused = hostmem.retained() or jax.default_backend() != "cpu"  # device allocators reuse their memory
    return "full" if d_model >= FULL_LOGITS_MIN_D and small and reused else "blocked"


def vocab_block_for(token_block: int, vocab: int) -> int:
    """A power of two in [256, 8192] with token_block x vocab_block ~ TILE_LOGITS, at most the vocabulary."""
    block = max(256, min(8192, TILE_LOGITS // max(token_block, 1)))
    block = 1 << (block.bit_length() - 1)
    return min(block, vocab)


def plain_cross_entropy(h, unembed, y):
    logits = jnp.einsum("nd,vd->nv", h, unembed, preferred_element_type=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    return jnp.mean(lse - target)


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
    """carry = fn(carry, W_b, start, mask) for every block of vocab_block rows of W, read in place
    (dynamic slices, no copy of W). When vocab_block does not divide V, the last block is the last
    vocab_block rows, overlapping the one before it; `mask` (True for the rows new to it, else None)
    says which of its columns count."""
    v = w.shape[0]
    n = v // vocab_block

    def body(c, i):
        start = i * vocab_block
        return fn(c, lax.dynamic_slice_in_dim(w, start, vocab_block), start, None), None

    carry = lax.scan(body, carry, jnp.arange(n, dtype=jnp.int32))[0]
    if v % vocab_block:
        start = v - vocab_block
        mask = jnp.arange(vocab_block) >= n * vocab_block - start
        carry = fn(carry, w[start:], start, mask)
    return carry


def _log_sum_exp(h, w, token_block, vocab_block):
    """Per-token log-sum-exp over the whole vocabulary, one vocabulary block at a time."""
    hb = _token_blocks(h, token_block)  # [k, t, d]
    if hb.shape[0] == 1:
        hb = h  # one token block: plain 2-D tiles (a batched dot of one is slower on XLA:CPU)

    def update(carry, wb, start, mask):
        m, s = carry
        logits = _logits(hb, wb)  # [k, t, v] or [t, v]
        if mask is not None:
            logits = jnp.where(mask, logits, -jnp.inf)
        m_new = jnp.maximum(m, logits.max(-1))
        return m_new, s * jnp.exp(m - m_new) + jnp.exp(logits - m_new[..., None]).sum(-1)

    zero = _zeros_like(hb[..., 0])
    m, s = _walk_vocabulary(w, vocab_block, update, (zero - jnp.inf, zero))
    return (m + jnp.log(s)).reshape(-1)


def _gradients(h, w, y, lse, scale, token_block, vocab_block):
    """scale x (d loss_sum / dh, d loss_sum / dW), dW accumulated in place block by block."""
    n, d = h.shape
    hb, lb = _token_blocks(h, token_block), _token_blocks(lse, token_block)
    hs = hb * scale.astype(h.dtype)  # the scale rides on h in dW = (s h)^T P: no pass over dW for it

    def tile(h_t, hs_t, lse_t, wb, mask):  # -> (P @ W_b [t, d], (s h)^T @ P [d, v])
        p = jnp.exp(_logits(h_t, wb) - lse_t[:, None])
        if mask is not None:
            p = jnp.where(mask, p, 0.0)
        p = p.astype(w.dtype)
        dh = jnp.einsum("tv,vd->td", p, wb, preferred_element_type=jnp.float32)
        dwt = jnp.einsum("td,tv->dv", hs_t, p, preferred_element_type=jnp.float32)
        return dh, dwt

    def block(carry, wb, start, mask):
        dh, dw = carry  # dh [k, t, d] over all vocabulary blocks; dW [V, d] written block by block
        if hb.shape[0] == 1:
            dh_b, dwt = tile(hb[0], hs[0], lb[0], wb, mask)
            dh = dh + dh_b[None]
        else:
            def over_tokens(dwt, xs):
                h_t, hs_t, lse_t, dh_t = xs
                dh_b, dwt_b = tile(h_t, hs_t, lse_t, wb, mask)
                return dwt + dwt_b, dh_t + dh_b

            dwt, dh = lax.scan(over_tokens, _zeros_like(hb, (d, wb.shape[0])), (hb, hs, lb, dh))
        # the barrier keeps XLA from folding this small transpose into the dot as P^T @ (s h), which
        # ran 1.5-2.5x slower than (s h)^T @ P on XLA:CPU
        dw_b = lax.optimization_barrier(dwt).T.astype(dw.dtype)
        if mask is not None:  # the overlapping rows were written by the block before
            dw_b = jnp.where(mask[:, None], dw_b, lax.dynamic_slice_in_dim(dw, start, wb.shape[0]))
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
    target = jnp.einsum("nd,nd->n", h, w[y], preferred_element_type=jnp.float32)
    return jnp.mean(lse - target), lse


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
