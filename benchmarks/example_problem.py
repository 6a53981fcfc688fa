"""An example user problem for ``--problem benchmarks.example_problem:make_problem``.

A user problem is a function of no arguments returning ``(f, z0, args)`` or
``(f, z0, args, in_axes)``: ``f(z, *args)`` maps a batch of states (axis 0 of every leaf
of ``z0``) to the same pytree, and ``in_axes`` marks each argument as batched (``0``) or
shared by all samples (``None``, the default). Gradients are taken with respect to every
floating argument. Here: a pytree state ``{"h": (batch, 64), "c": (batch, 8)}`` and a
contractive coupled tanh map.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def layer(z: dict, params: dict, x: jax.Array) -> dict:
    """``h ← tanh(h W + c V + x)``, ``c ← tanh(h P)``: both parts are coupled."""
    h = jnp.tanh(z["h"] @ params["w"] + z["c"] @ params["v"] + x)
    c = jnp.tanh(z["h"] @ params["p"])
    return {"h": h, "c": c}


def make_problem(batch: int = 16) -> tuple:
    """``(f, z0, args, in_axes)`` for :func:`layer` with random weights of small norm."""
    kw, kv, kp, kx = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {
        "w": 0.6 * jax.random.normal(kw, (64, 64)) / 8.0,
        "v": 0.3 * jax.random.normal(kv, (8, 64)) / 8.0,
        "p": 0.3 * jax.random.normal(kp, (64, 8)) / 8.0,
    }
    x = jax.random.normal(kx, (batch, 64))
    z0 = {"h": jnp.zeros((batch, 64)), "c": jnp.zeros((batch, 8))}
    return layer, z0, (params, x), (None, 0)
