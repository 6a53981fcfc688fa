"""The gradient audit of a batch where the reference solve reaches some sequences' equilibria
and not others': its ``*_converged`` pair is the comparison on the sub-batch of the others.

The reference here is made to split the batch on purpose: it runs ``K`` iterations with a
tolerance between the sequences' residuals after ``K`` iterations. With the Jacobian penalty
off, the loss masked to the converged sequences has the same gradient as the loss of the
sub-batch made of them alone (solves are per sequence), which is computed here directly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from implicit import ForwardSolveWarning, Implicit, compare_gradients
from models.data import BatchSampler, load_corpus, split_corpus
from models.lm import deq_solver, make_model
from models.optim import make_optimizer
from models.sharding import make_mesh, replicate, shard_batch, to_host
from models.step import init_state, make_audit_step, step_key, training_loss
from tests.models.train_support import FAST, tiny_config

K = 1


def test_the_converged_pair_compares_the_gradients_of_the_converged_sequences(tmp_path) -> None:
    # The injection block: at initialisation its f depends on z enough that one iteration
    # leaves residuals (and gradients) far apart between sequences.
    config = tiny_config(tmp_path, model="deq", batch_size=8, max_iter=12, tol=1e-4,
                         backward_tol=1e-5, backward_max_iter=40, jac_reg=0.0,
                         block="injection", fp_correction=0)
    model = make_model(config)
    state = to_host(init_state(model, make_optimizer(config), config, FAST))
    train_bytes, _ = split_corpus(load_corpus(config.data, max_bytes=config.max_bytes), 0.1,
                                  config.seq_len + 1)
    batch = BatchSampler(train_bytes, config.batch_size, config.seq_len, config.seed).batch(0)
    key = step_key(config, state.step)

    # Residuals after K iterations, never stopping early: the tolerance goes between them.
    probe = make_model(config, deq_solver(config).replace(max_iter=K, tol=0.0))
    probe_residual = jax.jit(lambda params, inputs: probe.apply(
        params, key, inputs, None, True).stats["rel_residual"], compiler_options=FAST)
    residual = np.asarray(probe_residual(state.params, batch[:, :-1]))
    split = float(np.median(residual))
    assert residual.min() < split < residual.max(), residual
    tight = deq_solver(config).replace(max_iter=K, tol=split)
    reference = make_model(config, tight, Implicit(tight.replace(tol=1e-5, max_iter=40)))

    mesh = make_mesh()
    with pytest.warns(ForwardSolveWarning):  # the reference says it differentiates early
        audit = to_host(make_audit_step(model, reference, config, mesh, FAST)(
            replicate(state, mesh), shard_batch(batch, mesh)))
    kept = residual <= split
    assert audit["audit_reference_converged"] == pytest.approx(kept.mean())

    sub = dataclasses.replace(config, batch_size=int(kept.sum()))
    configured, exact = training_loss(model, sub), training_loss(reference, sub)

    def gradient(loss):
        return jax.jit(jax.grad(lambda p: loss(p, jnp.asarray(batch[kept]), key)[0]),
                       compiler_options=FAST)(state.params)

    expected = compare_gradients(gradient(configured), gradient(exact))
    assert audit["audit_cosine_converged"] == pytest.approx(float(expected.cosine), abs=1e-5)
    assert audit["audit_rel_error_converged"] == pytest.approx(
        float(expected.relative_error), rel=1e-3, abs=1e-5)
    # The whole batch's pair is worse: where the reference stopped early, the two differ more.
    assert audit["audit_rel_error_converged"] < 0.95 * audit["audit_rel_error"]
