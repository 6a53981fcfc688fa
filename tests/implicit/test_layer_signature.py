"""One layer signature across frameworks: ``DEQ(block, *, solver, backward, return_stats,
jacobian_penalty, transform_params, correction, **solver_options)``, and the same outputs.

Each layer here wraps the linear block ``z ↦ z Wᵀ + x`` with ``W = 0.5·I`` (d = 3), so
``z* = 2x`` and the Jacobian penalty ``‖∂f/∂z‖_F² / numel(z*)`` is ``‖W‖_F² / d = 0.25``
exactly for every probe direction's expectation; with many probes the estimate is close.
"""

from __future__ import annotations

import inspect

import equinox as eqx
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import implicit.equinox
import implicit.flax
import implicit.haiku
from implicit import JacobianPenalty

SHARED = ["solver", "backward", "return_stats", "jacobian_penalty", "transform_params",
          "correction"]
OWN = {implicit.haiku.DEQ: ["name", "record_state"], implicit.flax.DEQ: ["rngs"],
       implicit.equinox.DEQ: []}
D = 3
PENALTY = JacobianPenalty(num_probes=2000)
PLAIN = dict(solver="fixed_point", tol=1e-6, max_iter=60, return_stats=True,
             jacobian_penalty=PENALTY)


@pytest.mark.parametrize("layer", list(OWN), ids=lambda c: c.__module__)
def test_the_three_layers_take_the_same_keywords(layer):
    parameters = list(inspect.signature(layer.__init__).parameters.values())[1:]
    assert parameters[0].name in ("fn", "block")
    assert parameters[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    keywords = [p for p in parameters[1:-1]]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in keywords)
    assert [p.name for p in keywords] == SHARED + OWN[layer]
    assert parameters[-1].kind is inspect.Parameter.VAR_KEYWORD  # the solver's options
    defaults = {p.name: p.default for p in keywords}
    assert (defaults["solver"], defaults["backward"], defaults["return_stats"]) == (
        "broyden", "implicit", False)


def _check(z, stats, penalty, x):
    np.testing.assert_allclose(z, 2 * np.asarray(x), rtol=1e-5)
    assert bool(np.all(stats.converged))
    np.testing.assert_allclose(penalty, 0.25, rtol=0.1)


def test_haiku_returns_value_stats_and_penalty():
    def forward(x):
        block = lambda z, x: hk.Linear(D, with_bias=False, w_init=hk.initializers.Identity(0.5))(z) + x  # noqa: E731
        return implicit.haiku.DEQ(block, **PLAIN)(x)

    x = jnp.ones((2, D))
    model = hk.transform(forward)
    params = model.init(jax.random.key(0), x)
    _check(*model.apply(params, jax.random.key(1), x), x)


class NNXBlock(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(0.5 * jnp.eye(D))

    def __call__(self, z, x):
        return z @ self.w[...].T + x


def test_flax_returns_value_stats_and_penalty():
    x = jnp.ones((2, D))
    layer = implicit.flax.DEQ(NNXBlock(), rngs=nnx.Rngs(0), **PLAIN)
    _check(*layer(x), x)


class EqxBlock(eqx.Module):
    w: jax.Array

    def __call__(self, z, x, *, key=None):
        return self.w @ z + x


def test_equinox_returns_value_stats_and_penalty():
    x = jnp.ones(D)
    layer = implicit.equinox.DEQ(EqxBlock(0.5 * jnp.eye(D)), **PLAIN)
    _check(*layer(x, key=jax.random.key(0)), x)
    with pytest.raises(ValueError, match="needs a random key"):
        layer(x)
    # transform_params maps the block's arrays once per call: W/2 doubles z* − x's share.
    halved = implicit.equinox.DEQ(EqxBlock(jnp.eye(D)), solver="fixed_point", tol=1e-6,
                                  max_iter=60, transform_params=lambda p: jax.tree_util.tree_map(
                                      lambda a: None if a is None else 0.5 * a, p))
    np.testing.assert_allclose(halved(x), 2 * np.asarray(x), rtol=1e-5)
