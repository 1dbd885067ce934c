"""jaxscale's models in PyTorch, for the step-time benchmarks: same shapes, initialisation and optimizer.

- `TinyTransformer`: jaxscale.models.tiny — pre-norm LayerNorm (eps 1e-6, Flax's default), fused qkv,
  causal softmax attention, tanh-GELU MLP, learned positions, tied input/output embeddings.
- `Llama`: jaxscale.models.llama — RMSNorm, rotary positions ("rotate half"), grouped-query
  attention, SwiGLU, untied embeddings, no biases.
- `optimizer` / `train_step`: AdamW as jaxscale.step builds it — global-norm clipping, Adam with
  (beta1, beta2, eps 1e-8), decoupled weight decay on matrices only (ndim >= 2), linear warmup then
  cosine decay to lr * min_lr_ratio — written the way a PyTorch user would (torch.optim.AdamW,
  clip_grad_norm_, the full logits into F.cross_entropy).
- `load_jax_params`: copies a jaxscale parameter tree into a module, so both frameworks can be
  checked to give the same loss from the same weights (tests/test_torch_parity.py).

torch is a benchmark-only dependency: `pip install 'jaxscale[bench]'` (torch==2.13.0, the CPU build).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jaxscale.config import ModelConfig, TrainConfig, default_heads


def _normal(*shape, std=0.02):
    return nn.Parameter(torch.randn(*shape) * std)


class TinyBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads or default_heads(cfg)
        out_std = 0.02 / math.sqrt(2 * cfg.n_layers)
        self.ln_attn = nn.LayerNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.ln_mlp = nn.LayerNorm(d, eps=1e-6)
        self.mlp_in = nn.Linear(d, cfg.d_mlp)
        self.mlp_out = nn.Linear(cfg.d_mlp, d)
        for layer, std in ((self.qkv, 0.02), (self.attn_out, out_std), (self.mlp_in, 0.02), (self.mlp_out, out_std)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.qkv(self.ln_attn(x)).view(b, t, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [b, heads, t, head_dim]
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_out(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_out(F.gelu(self.mlp_in(self.ln_mlp(x)), approximate="tanh"))


class TinyTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, seq_len: int):
        super().__init__()
        self.cfg = cfg
        self.tok_embed = nn.Embedding(vocab_size, cfg.d_model)
        nn.init.normal_(self.tok_embed.weight, std=0.02)
        self.pos_embed = _normal(seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(TinyBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model, eps=1e-6)
        self.lm_head = None if cfg.tie_embeddings else _normal(vocab_size, cfg.d_model)

    def forward(self, tokens, targets):
        x = self.tok_embed(tokens) + self.pos_embed[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = self.ln_final(x)
        unembed = self.tok_embed.weight if self.lm_head is None else self.lm_head
        logits = x @ unembed.T  # [batch, seq, vocab]: PyTorch materialises all of it
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def rope(x, theta: float):
    """x [b, t, heads, head_dim], the "rotate half" pairing (i, i + head_dim/2)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float32) / half)
    angles = torch.arange(x.shape[1], dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class LlamaBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads or default_heads(cfg)
        self.n_kv = cfg.n_kv_heads or self.n_heads
        self.head_dim, self.theta = d // self.n_heads, cfg.rope_theta
        self.attn_norm, self.mlp_norm = RMSNorm(d, cfg.norm_eps), RMSNorm(d, cfg.norm_eps)
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate = nn.Linear(d, cfg.d_mlp, bias=False)
        self.up = nn.Linear(d, cfg.d_mlp, bias=False)
        self.down = nn.Linear(cfg.d_mlp, d, bias=False)
        for layer in (self.q, self.k, self.v, self.o, self.gate, self.up, self.down):
            nn.init.normal_(layer.weight, std=0.02)

    def forward(self, x):
        b, t, d = x.shape
        h = self.attn_norm(x)
        q = rope(self.q(h).view(b, t, self.n_heads, self.head_dim), self.theta).transpose(1, 2)
        k = rope(self.k(h).view(b, t, self.n_kv, self.head_dim), self.theta).transpose(1, 2)
        v = self.v(h).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv != self.n_heads)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, seq_len: int):
        super().__init__()
        self.cfg = cfg
        self.tok_embed = _normal(vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = _normal(vocab_size, cfg.d_model)

    def forward(self, tokens, targets):
        x = F.embedding(tokens, self.tok_embed)
        for block in self.blocks:
            x = block(x)
        logits = self.norm(x) @ self.lm_head.T
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def build_model(cfg: ModelConfig, vocab_size: int, seq_len: int) -> nn.Module:
    if cfg.arch == "tiny":
        return TinyTransformer(cfg, vocab_size, seq_len)
    if cfg.arch == "llama":
        return Llama(cfg, vocab_size, seq_len)
    raise ValueError(f"model.arch: {cfg.arch!r} is not one of tiny, llama")


# --- weights from jaxscale ----------------------------------------------------------------------


def _t(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x, dtype=np.float32))


def _linear(layer: nn.Linear, kernel, bias=None):
    """A Flax kernel [*in, *out] into nn.Linear's weight [out, in] (in and out flattened)."""
    k = _t(kernel)
    layer.weight.copy_(k.reshape(layer.in_features, layer.out_features).T)
    if bias is not None:
        layer.bias.copy_(_t(bias).reshape(-1))


def _norm(layer, p):
    if isinstance(layer, nn.LayerNorm):
        layer.weight.copy_(_t(p["scale"]))
        layer.bias.copy_(_t(p["bias"]))
    else:
        layer.scale.copy_(_t(p["scale"]))


@torch.no_grad()
def load_jax_params(model: nn.Module, params) -> nn.Module:
    """Copy jaxscale parameters (the `params` of model.init, unboxed) into the PyTorch module."""
    if isinstance(model, TinyTransformer):
        model.tok_embed.weight.copy_(_t(params["tok_embed"]["embedding"]))
        model.pos_embed.copy_(_t(params["pos_embed"]))
        if model.lm_head is not None:
            model.lm_head.copy_(_t(params["lm_head"]))
        _norm(model.ln_final, params["ln_final"])
        for i, block in enumerate(model.blocks):
            p = params[f"block_{i}"]
            _norm(block.ln_attn, p["ln_attn"])
            _norm(block.ln_mlp, p["ln_mlp"])
            for name in ("qkv", "attn_out", "mlp_in", "mlp_out"):
                _linear(getattr(block, name), p[name]["kernel"], p[name]["bias"])
    else:
        model.tok_embed.copy_(_t(params["tok_embed"]))
        model.lm_head.copy_(_t(params["lm_head"]))
        _norm(model.norm, params["norm"])
        for i, block in enumerate(model.blocks):
            p = params[f"block_{i}"]
            _norm(block.attn_norm, p["attn_norm"])
            _norm(block.mlp_norm, p["mlp_norm"])
            for name in ("q", "k", "v", "o"):
                _linear(getattr(block, name), p["attn"][name]["kernel"])
            for name in ("gate", "up", "down"):
                _linear(getattr(block, name), p["mlp"][name]["kernel"])
    return model


# --- the optimizer and one training step ----------------------------------------------------------


def optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with decay on matrices (ndim >= 2: embeddings and kernels), none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": train.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=1e-8)


def learning_rate(step: int, train: TrainConfig, steps: int) -> float:
    """jaxscale.step.learning_rate in plain Python."""
    warmup = -(-int(train.warmup_frac * steps * 1000) // 1000)
    if step < warmup:
        return train.lr * (step + 1) / max(warmup, 1)
    decay = steps - warmup  # its first step at the peak, its last at the floor (one step: the floor)
    progress = min(max((step - warmup) / (decay - 1), 0.0), 1.0) if decay > 1 else 1.0
    return train.lr * (train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_step(model, loss_fn, opt, batch: torch.Tensor, step: int, train: TrainConfig, steps: int) -> float:
    """One AdamW step on batch [B, T+1]; loss_fn(tokens, targets) is the model or its torch.compile.
    Returns the loss as a Python float (the host sync a training loop does each step)."""
    for group in opt.param_groups:
        group["lr"] = learning_rate(step, train, steps)
    loss = loss_fn(batch[:, :-1], batch[:, 1:])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    opt.step()
    return loss.item()
