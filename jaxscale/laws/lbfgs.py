"""Many small L-BFGS problems at once, in JAX.

Every problem in a batch (one start of the fitting grid, or one start of one bootstrap resample) is an independent
L-BFGS run over the same data with its own per-run weights. Each jitted step does exactly one objective-and-gradient
evaluation for every slot; a slot is a small state machine (accept, expand or backtrack the trial step), so no slot
waits for another's line search. A host-side pool of `slots` refills finished slots with pending starts, so slow
starts do not hold up fast ones (a whole-batch vmap would run every start for as long as the slowest one).

Line search (weak Wolfe, c1 = 1e-4, c2 = 0.9): a step that meets the Armijo condition while the slope is still steep
is expanded 4x; a failing step backtracks (quadratic interpolation, factor in [0.1, 0.5]) or falls back to the last
expanding point. The first step of a start, and any step after a memory reset, has unit length, as in L-BFGS-B.
Curvature pairs with s·y <= eps·y·y are skipped. A start stops when (f_old - f_new) <= ftol * max(|f_old|, |f_new|, 1)
(L-BFGS-B's rule), when max|g| <= gtol, when a backtracked step is too short to move x, or after max_evals
evaluations. A start whose first evaluation is not finite is marked diverged (f = inf); a non-finite trial point
later is treated as a failed step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# f(x (S,P), weights (S,n), data) -> (values (S,), gradients (S,P)); must be batched over S itself.
BatchedObjective = Callable[..., tuple[jax.Array, jax.Array]]

ARMIJO_C1 = 1e-4
WOLFE_C2 = 0.9
EXPANSION = 4.0
MAX_STEP = 1e10
CURVATURE_EPS = 2.2e-16  # L-BFGS-B skips a pair when s·y <= eps·y·y, with eps the float64 machine epsilon


class SlotState(NamedTuple):
    x: jax.Array  # (S,P) current iterate
    f: jax.Array  # (S,)
    g: jax.Array  # (S,P)
    d: jax.Array  # (S,P) search direction
    t: jax.Array  # (S,) trial step along d
    t_ok: jax.Array  # (S,) last step that met the Armijo condition while expanding
    f_ok: jax.Array  # (S,)
    g_ok: jax.Array  # (S,P)
    has_ok: jax.Array  # (S,)
    shrunk: jax.Array  # (S,) this line search has backtracked
    s_mem: jax.Array  # (M,S,P) oldest .. newest
    y_mem: jax.Array  # (M,S,P)
    rho_mem: jax.Array  # (M,S); 0 marks an empty entry
    fresh: jax.Array  # (S,) x not evaluated yet
    done: jax.Array  # (S,)
    diverged: jax.Array  # (S,) the start itself was not finite
    n_evals: jax.Array  # (S,)


@dataclass(frozen=True)
class BatchResult:
    x: np.ndarray  # (K,P) final iterate per start
    f: np.ndarray  # (K,) final objective; inf for a diverged start
    n_evals: np.ndarray  # (K,)
    slot_evals: int  # evaluations computed, useful or not (slots x steps x calls)


def _two_loop(g, s_mem, y_mem, rho_mem):
    """-H g for the memory (M,S,P) oldest first; empty entries (rho = 0) are no-ops."""

    def newest_first(q, mem):
        s_i, y_i, rho_i = mem
        a_i = rho_i * jnp.sum(s_i * q, axis=1)
        return q - a_i[:, None] * y_i, a_i

    q, alphas = jax.lax.scan(newest_first, g, (s_mem, y_mem, rho_mem), reverse=True)
    s_new, y_new = s_mem[-1], y_mem[-1]
    has_pair = rho_mem[-1] > 0
    gamma = jnp.where(has_pair, jnp.sum(s_new * y_new, 1) / jnp.where(has_pair, jnp.sum(y_new * y_new, 1), 1.0), 1.0)

    def oldest_first(r, mem):
        s_i, y_i, rho_i, a_i = mem
        b_i = rho_i * jnp.sum(y_i * r, axis=1)
        return r + (a_i - b_i)[:, None] * s_i, None

    r, _ = jax.lax.scan(oldest_first, gamma[:, None] * q, (s_mem, y_mem, rho_mem, alphas))
    return -r


def _unit_length_step(d):
    return 1.0 / jnp.maximum(jnp.linalg.norm(d, axis=1), jnp.finfo(d.dtype).tiny)


def _step(objective, ftol, gtol, max_evals, state: SlotState, weights, data) -> SlotState:
    s = state
    active = ~s.done
    x_trial = jnp.where(s.fresh[:, None], s.x, s.x + s.t[:, None] * s.d)
    f_t, g_t = objective(x_trial, weights, data)
    finite = jnp.isfinite(f_t) & jnp.all(jnp.isfinite(g_t), axis=1)
    gd = jnp.sum(s.g * s.d, axis=1)
    armijo = finite & (f_t <= s.f + ARMIJO_C1 * s.t * gd) & ~s.fresh
    flat_enough = jnp.sum(g_t * s.d, axis=1) >= WOLFE_C2 * gd
    searching = active & ~s.fresh

    # Weak Wolfe line search, one evaluation per step: expand while the slope stays steep, backtrack on failure,
    # fall back to the last expanding point when a longer step fails.
    take_trial = active & ((s.fresh & finite) | (armijo & (flat_enough | s.shrunk | (s.t >= MAX_STEP))))
    take_ok = searching & ~armijo & s.has_ok
    expand = searching & armijo & ~take_trial
    backtrack = searching & ~armijo & ~s.has_ok
    accept = take_trial | take_ok
    moved = accept & ~s.fresh
    x_new = jnp.where(take_ok[:, None], s.x + s.t_ok[:, None] * s.d, x_trial)
    f_new = jnp.where(take_ok, s.f_ok, f_t)
    g_new = jnp.where(take_ok[:, None], s.g_ok, g_t)

    s_vec, y_vec = x_new - s.x, g_new - s.g
    sy, yy = jnp.sum(s_vec * y_vec, 1), jnp.sum(y_vec * y_vec, 1)
    store = moved & (sy > CURVATURE_EPS * yy)
    append = lambda mem, new: jnp.concatenate([mem[1:], new[None]], axis=0)
    s_mem = jnp.where(store[:, None], append(s.s_mem, s_vec), s.s_mem)
    y_mem = jnp.where(store[:, None], append(s.y_mem, y_vec), s.y_mem)
    rho_mem = jnp.where(store, append(s.rho_mem, 1.0 / jnp.where(store, sy, 1.0)), s.rho_mem)

    x = jnp.where(accept[:, None], x_new, s.x)
    f = jnp.where(accept, f_new, s.f)
    g = jnp.where(accept[:, None], g_new, s.g)

    d_new = _two_loop(g, s_mem, y_mem, rho_mem)
    reset = ~(jnp.sum(g * d_new, 1) < 0) | (rho_mem[-1] == 0)  # also catches a non-finite direction
    d_new = jnp.where(reset[:, None], -g, d_new)
    forget = accept & reset
    s_mem = jnp.where(forget[:, None], 0.0, s_mem)
    y_mem = jnp.where(forget[:, None], 0.0, y_mem)
    rho_mem = jnp.where(forget, 0.0, rho_mem)
    t_new = jnp.where(reset, _unit_length_step(d_new), 1.0)

    # Backtracking: minimiser of the quadratic through f, f'(0) and f(t), kept in [0.1t, 0.5t].
    curvature = f_t - s.f - gd * s.t
    t_quad = -gd * s.t**2 / (2.0 * jnp.where(curvature > 0, curvature, 1.0))
    t_back = jnp.where(finite & (curvature > 0), jnp.clip(t_quad, 0.1 * s.t, 0.5 * s.t), 0.1 * s.t)
    tiny = 10 * jnp.finfo(f.dtype).eps * (1.0 + jnp.linalg.norm(s.x, axis=1))
    stalled = backtrack & ~(s.t * jnp.linalg.norm(s.d, axis=1) > tiny)

    converged = moved & (
        (s.f - f_new <= ftol * jnp.maximum(jnp.maximum(jnp.abs(s.f), jnp.abs(f_new)), 1.0))
        | (jnp.max(jnp.abs(g_new), axis=1) <= gtol)
    )
    diverged = active & s.fresh & ~finite
    n_evals = s.n_evals + active
    done = s.done | converged | diverged | stalled | (n_evals >= max_evals)

    return SlotState(
        x=x,
        f=f,
        g=g,
        d=jnp.where(accept[:, None], d_new, s.d),
        t=jnp.where(accept, t_new, jnp.where(backtrack, t_back, jnp.where(expand, EXPANSION * s.t, s.t))),
        t_ok=jnp.where(expand, s.t, s.t_ok),
        f_ok=jnp.where(expand, f_t, s.f_ok),
        g_ok=jnp.where(expand[:, None], g_t, s.g_ok),
        has_ok=(s.has_ok | expand) & ~accept,
        shrunk=(s.shrunk | backtrack) & ~accept,
        s_mem=s_mem,
        y_mem=y_mem,
        rho_mem=rho_mem,
        fresh=s.fresh & ~active,
        done=done,
        diverged=s.diverged | diverged,
        n_evals=n_evals,
    )


@partial(jax.jit, static_argnames=("objective", "steps"))
def _run_steps(state, weights, data, ftol, gtol, max_evals, *, objective, steps):
    body = lambda _, st: _step(objective, ftol, gtol, max_evals, st, weights, data)
    return jax.lax.fori_loop(0, steps, body, state)


def _empty_state(slots: int, n_params: int, memory: int, dtype) -> dict[str, np.ndarray]:
    z = lambda *shape: np.zeros(shape, dtype)
    return dict(
        x=z(slots, n_params),
        f=z(slots),
        g=z(slots, n_params),
        d=z(slots, n_params),
        t=z(slots),
        t_ok=z(slots),
        f_ok=z(slots),
        g_ok=z(slots, n_params),
        has_ok=np.zeros(slots, bool),
        shrunk=np.zeros(slots, bool),
        s_mem=z(memory, slots, n_params),
        y_mem=z(memory, slots, n_params),
        rho_mem=z(memory, slots),
        fresh=np.zeros(slots, bool),
        done=np.ones(slots, bool),
        diverged=np.zeros(slots, bool),
        n_evals=np.zeros(slots, np.int32),
    )


def compile_ahead(objective, data, n_rows: int, *, n_params: int, slots: int = 64, steps_per_call: int = 16,
                  memory: int = 10, dtype=np.float32) -> None:
    """Compile the step minimize_many will use for these shapes now, e.g. in a thread while other work runs.

    For float64 call it inside `jax.enable_x64(True)` (a thread-local setting)."""
    state = SlotState(**_empty_state(slots, n_params, memory, dtype))
    weights = np.zeros((slots, n_rows), dtype)
    data = jax.tree.map(lambda a: np.asarray(a, dtype), data)
    tolerances = (np.asarray(0, dtype), np.asarray(0, dtype), np.int32(0))
    _run_steps.lower(state, weights, data, *tolerances, objective=objective, steps=steps_per_call).compile()


def minimize_many(
    objective: BatchedObjective,
    x0: np.ndarray,
    weights: np.ndarray,
    data,
    *,
    slots: int = 64,
    steps_per_call: int = 16,
    memory: int = 10,
    ftol: float = 2.2e-9,
    gtol: float = 1e-5,
    max_evals: int = 1000,
    dtype=np.float32,
) -> BatchResult:
    """Minimise objective from every row of x0 (K,P); row k uses weights[k] (K,n) over the shared data.

    The caller chooses dtype; for float64 wrap the call in `jax.enable_x64(True)`.
    """
    x0 = np.asarray(x0, dtype)
    weights = np.asarray(weights, dtype)
    n_starts, n_params = x0.shape
    state = _empty_state(slots, n_params, memory, dtype)
    slot_weights = np.zeros((slots, weights.shape[1]), dtype)
    owner = np.full(slots, -1)
    out_x = np.array(x0)
    out_f = np.full(n_starts, np.inf)
    out_evals = np.zeros(n_starts, np.int64)
    data = jax.tree.map(lambda a: jnp.asarray(a, dtype), data)
    pending = 0
    slot_evals = 0
    while True:
        finished = state["done"] & (owner >= 0)
        ids = owner[finished]
        out_x[ids] = state["x"][finished]
        out_f[ids] = np.where(state["diverged"][finished], np.inf, state["f"][finished])
        out_evals[ids] = state["n_evals"][finished]
        owner[finished] = -1
        free = np.flatnonzero(owner < 0)[: n_starts - pending]
        if free.size:
            new_ids = np.arange(pending, pending + free.size)
            pending += free.size
            owner[free] = new_ids
            for key, value in _empty_state(free.size, n_params, memory, dtype).items():
                if key.endswith("_mem"):
                    state[key][:, free] = value
                else:
                    state[key][free] = value
            state["x"][free] = x0[new_ids]
            state["fresh"][free] = True
            state["done"][free] = False
            slot_weights[free] = weights[new_ids]
        if not (owner >= 0).any():
            break
        new_state = _run_steps(
            SlotState(**state),
            slot_weights,
            data,
            np.asarray(ftol, dtype),
            np.asarray(gtol, dtype),
            np.int32(max_evals),
            objective=objective,
            steps=steps_per_call,
        )
        state = {k: np.array(v) for k, v in new_state._asdict().items()}
        slot_evals += slots * steps_per_call
    return BatchResult(x=out_x, f=out_f, n_evals=out_evals, slot_evals=slot_evals)
