"""The ``transformer`` benchmark problem is the DEQ language model's own block."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import transformer_problem
from models.config import TrainConfig


def test_the_problem_is_the_default_models_block_on_corpus_windows() -> None:
    problem = transformer_problem.build(batch=2)  # raises ProblemUnavailable if it broke
    config = TrainConfig()
    params, x, mask = problem.args
    assert problem.name == "transformer" and problem.dim == config.seq_len * config.d_model
    assert problem.in_axes == (None, 0, 0)
    chex.assert_shape(x, (2, config.seq_len, config.d_model))
    first = jax.jit(problem.f)(problem.z0, *problem.args)
    second = jax.jit(problem.f)(first, *problem.args)
    chex.assert_trees_all_equal_shapes_and_dtypes(first, problem.z0)
    assert bool(jnp.all(jnp.isfinite(first))) and bool(jnp.all(jnp.isfinite(second)))
    assert float(jnp.max(jnp.abs(second - first))) > 0  # f depends on z
    # One sample through per_sample() is that sample's row of the batched map.
    one = problem.per_sample()(problem.z0[1], params, x[1], mask[1])
    np.testing.assert_allclose(one, first[1], rtol=1e-5, atol=1e-5)
