"""The solvers a benchmark compares: every registered solver, and peers where installed.

A :class:`Contender` turns a :class:`~benchmarks.problems.Problem` into jittable functions
of ``(z0, *args)``:

* :meth:`Contender.forward` — the solve, returning :class:`Forward` (the batched value and
  per-sample iterations and ``f``-evaluations, and the residual trace when the solver
  keeps one);
* :meth:`Contender.solution` — ``z*`` as a differentiable function of the arguments (the
  solver's implicit gradient), or a string saying why there is none;
* :meth:`Contender.trace` — for solvers without a built-in trace, a separate run that
  records the best relative residual after every iteration (for the plots).

Registered solvers run on the batched ``f`` with ``batch_axis=0`` and are differentiated
with :func:`implicit.fixed_point` (``backward="implicit"``, the backward solver defaulting
to the forward one). Peers solve one sample at a time under ``jax.vmap`` with their own
stopping rule, configured to our per-sample test ``‖f(z) − z‖ ≤ tol·‖f(z)‖``: their
absolute tolerance per sample is ``tol·‖f(z*)‖`` from the float64 reference (peers
measure ``‖f(z) − z‖`` in absolute terms, or relative to ``z`` element by element). Every
contender's final residual is then re-measured by the benchmark in one way for all.

Peers (each only if its package imports):

* ``jaxopt.Broyden`` — jaxopt's own Broyden ``run`` (history 30, ``gamma = −1``, step 1),
  per sample via ``vmap``; its implicit gradient with its default normal-CG solve at ``tol``.
* ``optx.FixedPointIteration`` — optimistix's plain iteration; gradient by its default
  ``ImplicitAdjoint`` (a dense ``d × d`` LU per sample, so only for
  ``d ≤ dense_grad_max_dim``). lineax's GMRES would avoid the dense matrix, but in float32
  at the benchmarks' tolerance it stops with "stagnation" on some adjoint systems
  (``docs/results.md``), so it is not used.
* ``optx.Newton``, ``optx.Chord`` — optimistix's root finders on ``f(z) − z``: they form the
  dense ``d × d`` Jacobian (``d`` JVPs) and factor it (Newton at every step, Chord once),
  which is ``O(d³)`` per sample, so they run only for ``d ≤ dense_max_dim``; gradient by
  ``ImplicitAdjoint`` with its default dense solve.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

import solvers
from benchmarks.problems import Problem
from benchmarks.reference import Reference
from implicit import fixed_point
from solvers import residuals
from solvers.quiet_jaxopt import import_jaxopt
from solvers.types import PyTree

Fn = Callable[..., Any]

# Equinox (under optimistix) raises at run time when a solve fails (e.g. a singular linear
# solve); a benchmark wants the failure as NaN in its table instead. The variable is read
# when equinox is first imported, so this only applies if nothing imported it before.
os.environ.setdefault("EQX_ON_ERROR", "nan")


class Forward(NamedTuple):
    """What a forward solve returns: the batched value and per-sample counts."""

    value: PyTree
    steps: jax.Array  # (batch,) iterations
    fevals: jax.Array  # (batch,) evaluations of f
    trace: Optional[jax.Array]  # (batch, K + 1) best relative residual after k iterations
    reason: Optional[jax.Array] = None  # (batch,) solvers.Reason codes (our solvers only)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every contender is asked for: per-sample relative ``tol`` within ``max_iter``."""

    tol: float = 1e-5
    max_iter: int = 500
    dense_max_dim: int = 256
    dense_grad_max_dim: int = 2048
    solver_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


class Contender:
    """Base class: a named solver (see the module docstring)."""

    name: str = ""
    kind: str = "registry"
    description: str = ""

    def skip_reason(self, problem: Problem, settings: Settings) -> Optional[str]:
        """Why this contender does not run on ``problem`` (``None``: it runs)."""
        return None

    def forward(self, problem: Problem, ref: Reference, settings: Settings) -> Fn:
        """A jittable ``(z0, *args) -> Forward``: the solve."""
        raise NotImplementedError

    def solution(self, problem: Problem, ref: Reference, settings: Settings) -> Union[Fn, str]:
        """``(z0, *args) -> z*``, differentiable in ``args``; or a string saying why there is none."""
        raise NotImplementedError

    def trace(
        self, problem: Problem, ref: Reference, settings: Settings, steps: int
    ) -> Optional[Fn]:
        """A function ``(z0, *args) -> (batch, steps + 1)`` best residuals, or ``None``."""
        return None


# ----------------------------------------------------------------------------- registry


class Registered(Contender):
    """A solver from :func:`solvers.available`, run on the batched ``f`` with ``batch_axis=0``.

    ``name`` labels the row and keys its options in :attr:`Settings.solver_options`;
    ``solver`` is the registry name it runs (default: ``name``), so one solver can appear
    twice with different options (``compare_solvers --variant LABEL=SOLVER``).
    """

    kind = "registry"

    def __init__(self, name: str, solver: Optional[str] = None) -> None:
        self.name = name
        self.solver = solver or name
        self.description = f"solvers.get({self.solver!r}, ...), batch_axis=0"

    def built(self, settings: Settings) -> solvers.Solver:
        """The solver of this row: per-sample relative ``tol`` within ``max_iter``, then the
        row's own ``--solver-option`` options."""
        solve = solvers.get(self.solver, max_iter=settings.max_iter, tol=settings.tol,
                            stop_mode="rel", batch_axis=0)
        return solve.replace(**settings.solver_options.get(self.name, {}))

    def forward(self, problem: Problem, ref: Reference, settings: Settings) -> Fn:
        solve = self.built(settings)

        def run(z0: PyTree, *args: PyTree) -> Forward:
            sol = solve(problem.f, z0, *args)
            return Forward(sol.value, sol.stats.steps, sol.stats.fevals, sol.stats.trace,
                           sol.stats.reason)

        return run

    def solution(self, problem: Problem, ref: Reference, settings: Settings) -> Union[Fn, str]:
        solve = self.built(settings)

        def value(z0: PyTree, *args: PyTree) -> PyTree:
            return fixed_point(problem.f, z0, *args, solver=solve, backward="implicit").value

        return value


# ----------------------------------------------------------------------------- peers


def _per_sample_atol(ref: Reference, settings: Settings) -> jax.Array:
    return settings.tol * ref.scale


def _vmapped(problem: Problem, one: Fn, atol: jax.Array) -> Fn:
    """``(z0, *args) -> vmap(one)(z0_i, atol_i, *args_i)`` over the batch."""
    mapped = jax.vmap(one, in_axes=(0, 0, *problem.in_axes))
    return lambda z0, *args: mapped(z0, atol, *args)


def _scan_trace(
    problem: Problem, init: Fn, step: Fn, read: Fn, steps: int, atol: jax.Array
) -> Fn:
    """Per sample: ``state = init(z0, atol, *a)``, then ``steps`` × ``state = step(state, *a)``;
    ``read(state)`` is the iterate whose best relative residual is recorded."""
    f_single = problem.per_sample()

    def one(z0: PyTree, atol_i: jax.Array, *args: PyTree) -> jax.Array:
        state = init(z0, atol_i, *args)
        y = read(state)
        r0 = residuals(y, f_single(y, *args))[1]
        # A solver state may hold non-array leaves (optimistix's Chord keeps a jaxpr):
        # only the arrays are carried through the scan, the rest is fixed.
        leaves, treedef = jax.tree_util.tree_flatten(state)
        is_array = [isinstance(leaf, jax.Array) for leaf in leaves]

        def split(state: Any) -> list:
            return [x for x, a in zip(jax.tree_util.tree_leaves(state), is_array, strict=True) if a]

        def merge(arrays: list) -> Any:
            it = iter(arrays)
            return jax.tree_util.tree_unflatten(
                treedef, [next(it) if a else x for x, a in zip(leaves, is_array, strict=True)])

        def body(carry: tuple, _: None) -> tuple:
            arrays, best = carry
            state = step(merge(arrays), atol_i, *args)
            y = read(state)
            r = residuals(y, f_single(y, *args))[1]
            best = jnp.where(jnp.isfinite(r), jnp.minimum(best, r), best)
            return (split(state), best), best

        _, trace = lax.scan(body, (split(state), r0), None, length=steps)
        return jnp.concatenate([r0[None], trace])

    return _vmapped(problem, one, atol)


class JaxoptBroyden(Contender):
    """jaxopt's ``Broyden.run`` per sample (see the module docstring)."""

    name = "jaxopt.Broyden"
    kind = "peer"
    description = "jaxopt.Broyden(history_size=30, gamma=-1, stepsize=1).run, vmap per sample"

    def _solver(self, problem: Problem, atol: jax.Array, settings: Settings) -> Any:
        f_single = problem.per_sample()
        jaxopt = import_jaxopt()
        return jaxopt.Broyden(
            lambda y, *a: jax.tree_util.tree_map(jnp.subtract, f_single(y, *a), y),
            history_size=30, gamma=-1.0, stepsize=1.0, maxiter=settings.max_iter, tol=atol,
            implicit_diff_solve=functools.partial(
                import_jaxopt("linear_solve").solve_normal_cg, tol=settings.tol
            ),
        )

    def forward(self, problem: Problem, ref: Reference, settings: Settings) -> Fn:
        def one(z0: PyTree, atol: jax.Array, *args: PyTree) -> tuple:
            sol = self._solver(problem, atol, settings).run(z0, *args)
            return sol.params, sol.state.iter_num, sol.state.iter_num + 1

        run = _vmapped(problem, one, _per_sample_atol(ref, settings))
        return lambda z0, *args: Forward(*run(z0, *args), None)

    def solution(self, problem: Problem, ref: Reference, settings: Settings) -> Union[Fn, str]:
        def one(z0: PyTree, atol: jax.Array, *args: PyTree) -> PyTree:
            return self._solver(problem, atol, settings).run(z0, *args).params

        return _vmapped(problem, one, _per_sample_atol(ref, settings))

    def trace(self, problem: Problem, ref: Reference, settings: Settings, steps: int) -> Fn:
        def init(z0: PyTree, atol: jax.Array, *args: PyTree) -> tuple:
            return z0, self._solver(problem, atol, settings).init_state(z0, *args)

        def step(state: tuple, atol: jax.Array, *args: PyTree) -> tuple:
            return tuple(self._solver(problem, atol, settings).update(*state, *args))

        return _scan_trace(problem, init, step, lambda s: s[0], steps, _per_sample_atol(ref, settings))


class Optimistix(Contender):
    """An optimistix solver per sample (see the module docstring)."""

    kind = "peer"

    def __init__(self, solver_name: str) -> None:
        self.solver_name = solver_name
        self.name = f"optx.{solver_name}"
        self.root_finder = solver_name != "FixedPointIteration"
        self.dense = self.root_finder
        self.description = (
            f"optimistix.{'root_find' if self.root_finder else 'fixed_point'}"
            f"(optx.{solver_name}(norm=two_norm)), vmap per sample"
        )

    def skip_reason(self, problem: Problem, settings: Settings) -> Optional[str]:
        if self.dense and problem.dim > settings.dense_max_dim:
            return (
                f"dense Jacobian and LU per sample, O(d³) (--dense-max-dim "
                f"{settings.dense_max_dim}), skipped at d = {problem.dim}"
            )
        return None

    def _solver(self, atol: jax.Array) -> Any:
        import optimistix as optx

        cls = getattr(optx, self.solver_name)
        return cls(rtol=0.0, atol=atol, norm=optx.two_norm)

    def _fn(self, problem: Problem) -> Fn:
        f_single = problem.per_sample()
        if self.root_finder:
            return lambda y, a: jax.tree_util.tree_map(jnp.subtract, f_single(y, *a), y)
        return lambda y, a: f_single(y, *a)


    def _solve(self, problem: Problem, settings: Settings, z0: PyTree, atol: jax.Array,
               args: tuple, adjoint: Any = None) -> Any:
        import optimistix as optx

        run = optx.root_find if self.root_finder else optx.fixed_point
        kwargs = {} if adjoint is None else {"adjoint": adjoint}
        return run(
            self._fn(problem), self._solver(atol), z0, args, max_steps=settings.max_iter,
            throw=False, **kwargs,
        )

    def forward(self, problem: Problem, ref: Reference, settings: Settings) -> Fn:
        chord = self.solver_name == "Chord"

        def one(z0: PyTree, atol: jax.Array, *args: PyTree) -> tuple:
            sol = self._solve(problem, settings, z0, atol, args)
            steps = sol.stats["num_steps"]
            # one f per step; Chord also linearises f once at z0 (its Jacobian)
            return sol.value, steps, steps + (1 if chord else 0)

        run = _vmapped(problem, one, _per_sample_atol(ref, settings))
        return lambda z0, *args: Forward(*run(z0, *args), None)

    def solution(self, problem: Problem, ref: Reference, settings: Settings) -> Union[Fn, str]:
        import optimistix as optx

        if problem.dim > settings.dense_grad_max_dim:
            return (f"optimistix's default adjoint solves a dense d × d system per sample "
                    f"(--dense-grad-max-dim {settings.dense_grad_max_dim}), skipped at "
                    f"d = {problem.dim}")
        adjoint = optx.ImplicitAdjoint()

        def one(z0: PyTree, atol: jax.Array, *args: PyTree) -> PyTree:
            return self._solve(problem, settings, z0, atol, args, adjoint).value

        return _vmapped(problem, one, _per_sample_atol(ref, settings))

    def trace(self, problem: Problem, ref: Reference, settings: Settings, steps: int) -> Fn:
        fn = self._fn(problem)

        def with_aux(y: PyTree, a: tuple) -> tuple:
            return fn(y, a), None

        tags: frozenset = frozenset()

        def init(z0: PyTree, atol: jax.Array, *args: PyTree) -> tuple:
            f_struct = jax.eval_shape(lambda: fn(z0, args))
            state = self._solver(atol).init(with_aux, z0, args, {}, f_struct, None, tags)
            return z0, state

        def step(state: tuple, atol: jax.Array, *args: PyTree) -> tuple:
            y, inner = state
            y, inner, _ = self._solver(atol).step(with_aux, y, args, {}, inner, tags)
            return y, inner

        return _scan_trace(problem, init, step, lambda s: s[0], steps, _per_sample_atol(ref, settings))


OPTIMISTIX_SOLVERS = ("FixedPointIteration", "Newton", "Chord")


def peers() -> list[Contender]:
    """The peers whose packages import here."""
    found: list[Contender] = []
    if importlib.util.find_spec("jaxopt") is not None:
        found.append(JaxoptBroyden())
    if importlib.util.find_spec("optimistix") is not None:
        found += [Optimistix(name) for name in OPTIMISTIX_SOLVERS]
    return found


def all_contenders(include_peers: bool = True) -> list[Contender]:
    """Every registered solver of general fixed points (sorted by name; not the
    operator-splitting ones, which need a monotone operator), then the installed peers."""
    registered: list[Contender] = [Registered(name) for name in solvers.available(general=True)]
    return registered + (peers() if include_peers else [])


def variants(specs: Sequence[str], taken: Sequence[str]) -> list[Contender]:
    """``["LABEL=SOLVER", ...]`` → a :class:`Registered` row per spec, labelled ``LABEL``
    and running registry solver ``SOLVER``; bad specs, unknown solvers and labels that
    are already taken raise ``ValueError``."""
    found: list[Contender] = []
    used = set(taken)
    for spec in specs:
        label, sep, solver = spec.partition("=")
        if not sep or not label or not solver:
            raise ValueError(f"--variant expects LABEL=SOLVER, got {spec!r}")
        if solver not in solvers.available(general=True):
            raise ValueError(f"--variant {spec!r}: unknown solver {solver!r}; available: "
                             f"{', '.join(solvers.available(general=True))}")
        if label in used:
            raise ValueError(f"--variant {spec!r}: the label {label!r} is already a contender")
        used.add(label)
        found.append(Registered(label, solver))
    return found


def select(contenders: list[Contender], names: Optional[list[str]]) -> list[Contender]:
    """The contenders named in ``names`` (all for ``None``); unknown names raise ``ValueError``."""
    if not names:
        return contenders
    known = {c.name: c for c in contenders}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown solver(s) {', '.join(map(repr, unknown))}; available: {', '.join(known)}"
        )
    return [known[n] for n in names]
