"""Property tests of implicit gradients with the public kit `implicit.testing`.

Targets (issue 3): worst relative gradient error ≤ 1e-6 in float64 and ≤ 1e-3 in
float32 against central finite differences (float64 reference) and backprop
through 500 unrolled iterations, forward mode against reverse mode too.

The default profile draws a few examples per test (CI); the "thorough" profile
(registered in conftest.py) draws 200 per test:

    python -m pytest -s tests/implicit/test_properties.py --hypothesis-profile=thorough

With `-s` the worst errors seen are printed at the end of the module. Shapes come
from small fixed sets so the jitted checks compile once per configuration.
"""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest
from hypothesis import given, settings

import solvers
from implicit import BackwardSolveWarning, Implicit
from implicit.testing import (
    check_fixed_point_grads,
    contractive_layers,
    layers,
    pytree_states,
    state_shapes,
    strategies,
)

WORST: dict[str, list] = {}


THOROUGH = settings.get_current_profile_name() == "thorough"
# Each new shape compiles the checks anew: CI draws values for one shape per test,
# "thorough" also varies the sizes, the batch axis and the pytree kind.
DIMS = (2, 4) if THOROUGH else (3,)
BATCHES = (None, 2) if THOROUGH else (None,)


def examples(ci: int) -> int:
    """``ci`` examples, or the profile's count under ``--hypothesis-profile=thorough``."""
    return settings.get_profile("thorough").max_examples if THOROUGH else ci


@pytest.fixture(scope="module", autouse=True)
def print_worst_errors():
    yield
    for name, (error, count) in sorted(WORST.items()):
        print(f"\n{name}: worst relative gradient error {error:.3g} over {count} examples")


def check(name: str, layer, rtol: float, **kwargs) -> None:
    with jax.enable_x64(True):  # float64 references; the layer keeps its own dtype
        report = check_fixed_point_grads(
            layer.f, layer.z0, *layer.args, solver_options=layer.solver_options,
            reference_solver="fixed_point", **kwargs,
        )
    error, count = WORST.get(name, (0.0, 0))
    WORST[name] = [max(error, report.worst_rel_error), count + 1]
    assert report.forward_converged, report
    report.assert_close(rtol)


@settings(deadline=None, max_examples=examples(5))
@given(contractive_layers(dims=DIMS, batch_sizes=BATCHES, dtype=np.float64))
def test_float64_implicit_gradients(layer):
    check("float64 array states, broyden", layer, 1e-6)


@settings(deadline=None, max_examples=examples(5))
@given(contractive_layers(dims=DIMS, batch_sizes=BATCHES, dtype=np.float32))
def test_float32_implicit_gradients(layer):
    check("float32 array states, broyden", layer, 1e-3)


@settings(deadline=None, max_examples=examples(3))
@given(contractive_layers(dims=(2,), pytree_kinds=("dict", "nested") if THOROUGH else ("nested",),
                          batch_sizes=(None, 2) if THOROUGH else (2,)))
def test_float64_pytree_states_with_gmres(layer):
    check("float64 pytree states, gmres", layer, 1e-6, backward=Implicit("gmres"))


@settings(deadline=None, max_examples=examples(25))
@given(
    state_shapes(),
    pytree_states(batch_sizes=(None, 2)),
    contractive_layers(pytree_kinds=strategies.PYTREE_KINDS, batch_sizes=(None, 2)),
)
def test_strategies_draw_valid_contractive_problems(shape, state, layer):
    assert len(shape) in (1, 2)
    leaves = jax.tree_util.tree_leaves(state)
    assert leaves and len({leaf.shape[:-1] for leaf in leaves}) == 1
    assert np.linalg.norm(layer.args[0]["w"], 2) <= layer.contraction + 1e-12 < 1
    with jax.enable_x64(True):  # trace only: f keeps the structure, shapes and dtypes of z0
        out = jax.eval_shape(layer.f, layer.z0, *layer.args)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, layer.z0)
    batched = jax.tree_util.tree_leaves(layer.z0)[0].ndim == 2
    assert layer.solver_options == ({"batch_axis": 0} if batched else {})


def test_the_kit_reports_a_wrong_gradient():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3))
    params = {"w": 0.9 * w / np.linalg.norm(w, 2), "u": np.eye(3), "b": np.zeros(3)}
    with jax.enable_x64(True), pytest.warns(BackwardSolveWarning):
        report = check_fixed_point_grads(
            layers.tanh_layer, np.zeros(3), params, np.ones(3), solver="fixed_point",
            backward=Implicit(solvers.get("fixed_point", max_iter=1, tol=1e-12, stop_mode="abs")),
        )
        jax.effects_barrier()
    assert report.worst_rel_error > 1e-2, report
    with pytest.raises(AssertionError, match="off by more than"):
        report.assert_close(1e-6)
