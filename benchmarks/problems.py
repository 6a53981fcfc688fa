"""Benchmark problems: fixed points ``z = f(z, *args)`` with a batch of independent samples.

:class:`Problem` is what every benchmark measures on; this module builds the built-in
ones, :mod:`benchmarks.transformer_problem` the DEQ-Transformer block, and
:func:`user_problem` a user's own; :class:`ProblemUnavailable` says why a problem cannot
be built here. Every :class:`Problem` exposes the same map in the two forms solvers need:

* ``f(z, *args)``: batched, the batch on axis 0 of ``z`` and of the batched ``args``
  (those whose ``in_axes`` entry is ``0``); our registry solvers run it with
  ``batch_axis=0``;
* :meth:`Problem.per_sample`: ``f_i(z_i, *args_i)`` for one sample, for peers that
  solve one system at a time under ``jax.vmap`` (``in_axes`` gives the vmap axes).

Built-in families (``d`` is the per-sample size, ``B`` the batch):

* ``gauss``: ``z = tanh(z Wᵀ + x Uᵀ)``, ``W`` Gaussian scaled to spectral norm 0.9,
  ``x ~ N(0, 1)``; easy for every solver.
* ``slow-modes-ρ``: the same map with ``W = 0.5·G/‖G‖₂ + ρ·V Vᵀ`` (``V`` an orthonormal
  ``d×3`` basis): a bulk of fast modes and three slow ones, the Jacobian shape of a
  trained DEQ, with ``x ~ N(0, 0.1²)`` (the near-linear regime). ρ ∈ {0.9, 0.99, 0.999}.
* ``orthogonal``: ``W = 0.95·Q`` with ``Q`` a random orthogonal matrix and
  ``x ~ N(0, 0.1²)``: Jacobian eigenvalues spread on a circle of radius ≈ 0.95, where
  Krylov-type acceleration cannot beat plain iteration by much.
* ``noncontractive``: the linear map ``z ↦ z A + b`` with ``A = 0.5·G/‖G‖₂ + V diag(−2,
  −1.5, 1.5) Vᵀ``: spectral radius ≈ 2, so plain iteration diverges, while
  ``z* = b (I − A)⁻¹`` exists and is known.
* ``nonlinear``: a small (``d = 16``) coupled nonlinear system with a known, unique root
  ``z*``: ``f(z) = z − (z − z*) M − 0.1·(z³ − z*³)`` with ``M`` symmetric positive definite,
  eigenvalues in ``[0.2, 2.5]`` (``∂f/∂z`` has eigenvalues down to ≈ −1.5: not contractive).
* ``transformer``: the DEQ-Transformer block of :mod:`models` at initialisation (or from a
  checkpoint), when that package provides it (see :func:`transformer_problem`).
* a user's own layer, ``--problem module:function`` (see :func:`user_problem`).

The tanh layers are :func:`implicit.testing.layers.tanh_layer` with the injection
``b = x Uᵀ`` as their batched argument, computed once outside the solve as a DEQ does, so
``f(z, {"w": W}, b) = tanh(z Wᵀ + b)`` costs one matrix product per evaluation. Gradients
are taken with respect to ``W`` and ``b``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from implicit.testing.layers import tanh_layer
from solvers.types import PyTree

SLOW_RHOS = (0.9, 0.99, 0.999)
NONLINEAR_DIM = 16


@dataclasses.dataclass(frozen=True)
class Problem:
    """One batched fixed-point problem ``z = f(z, *args)``.

    Attributes:
      name: the row label (``"slow-modes-0.99"``); ``family`` groups variants.
      dim: per-sample state size.
      f: the batched map ``f(z, *args)``; ``z`` and the batched args carry the batch on axis 0.
      z0: the batched initial guess.
      args: the arguments of ``f``.
      in_axes: per argument, ``0`` if batched along axis 0 or ``None`` if shared.
      diff_argnums: the argument indices the benchmark differentiates with respect to.
      root: the exact batched solution when known, else ``None``.
      note: one line describing the problem.
    """

    name: str
    family: str
    dim: int
    f: Callable[..., PyTree]
    z0: PyTree
    args: tuple
    in_axes: tuple
    diff_argnums: tuple[int, ...]
    root: Optional[PyTree] = None
    note: str = ""

    @property
    def batch(self) -> int:
        return int(jax.tree_util.tree_leaves(self.z0)[0].shape[0])

    def per_sample(self) -> Callable[..., PyTree]:
        """``f_i(z_i, *args_i)`` on one sample: ``f`` on a batch of one."""
        f, in_axes = self.f, self.in_axes

        def f_single(z: PyTree, *args: PyTree) -> PyTree:
            batched = [
                jax.tree_util.tree_map(lambda a: a[None], arg) if axis == 0 else arg
                for arg, axis in zip(args, in_axes, strict=True)
            ]
            out = f(jax.tree_util.tree_map(lambda a: a[None], z), *batched)
            return jax.tree_util.tree_map(lambda a: a[0], out)

        return f_single

    def astype(self, dtype: Any) -> Problem:
        """The same problem with every floating array cast to ``dtype`` (for references)."""

        def cast(tree: PyTree) -> PyTree:
            return jax.tree_util.tree_map(
                lambda a: jnp.asarray(a, dtype)
                if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a,
                tree,
            )

        root = None if self.root is None else cast(self.root)
        return dataclasses.replace(self, z0=cast(self.z0), args=cast(self.args), root=root)


class ProblemUnavailable(RuntimeError):
    """A problem that cannot be built here (e.g. its package is missing); the reason is the message."""



def linear_map(z: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """``z A + b``."""
    return z @ a + b


def cubic_map(z: jax.Array, m: jax.Array, root: jax.Array) -> jax.Array:
    """``z − (z − z*) M − 0.1·(z³ − z*³)``: the root ``z*`` is exact and unique (M ≻ 0)."""
    return z - (z - root) @ m - 0.1 * (z**3 - root**3)


EXACT_NORM_MAX_DIM = 2048
"""Above this size ``‖G‖₂`` comes from power iteration on the default device: an exact
norm (an SVD on the host) of a 16384 × 16384 matrix would take longer than the benchmark."""
POWER_ITERATIONS = 100


def spectral_norm(g: np.ndarray) -> float:
    """``‖G‖₂``: exactly (NumPy's SVD) up to :data:`EXACT_NORM_MAX_DIM`, above it the
    estimate ``‖G v‖`` after :data:`POWER_ITERATIONS` steps ``v ← GᵀG v / ‖GᵀG v‖`` from a
    fixed random unit vector (a lower bound, close for the Gaussian matrices used here)."""
    if max(g.shape) <= EXACT_NORM_MAX_DIM:
        return float(np.linalg.norm(g, 2))

    @jax.jit
    def estimate(matrix: jax.Array, v: jax.Array) -> jax.Array:
        def step(_: int, v: jax.Array) -> jax.Array:
            w = matrix.T @ (matrix @ v)
            return w / jnp.linalg.norm(w)

        v = jax.lax.fori_loop(0, POWER_ITERATIONS, step, v)
        return jnp.linalg.norm(matrix @ v)

    start = np.random.default_rng(0).standard_normal(g.shape[1])
    with jax.default_matmul_precision("highest"):
        return float(estimate(jnp.asarray(g, jnp.float32),
                              jnp.asarray(start / np.linalg.norm(start), jnp.float32)))


def _spectral_normalise(g: np.ndarray) -> np.ndarray:
    return g / spectral_norm(g)


def _orthonormal(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return q


def _tanh_problem(
    name: str, family: str, w: np.ndarray, x_scale: float, batch: int,
    rng: np.random.Generator, note: str,
) -> Problem:
    d = w.shape[0]
    u = rng.standard_normal((d, d)) / np.sqrt(d)
    x = x_scale * rng.standard_normal((batch, d))
    b = x @ u.T
    args = ({"w": jnp.asarray(w, jnp.float32)}, jnp.asarray(b, jnp.float32))
    return Problem(
        name=name, family=family, dim=d, f=tanh_layer, z0=jnp.zeros((batch, d), jnp.float32),
        args=args, in_axes=(None, 0), diff_argnums=(0, 1), note=note,
    )


def gauss(dim: int, batch: int, seed: int = 0) -> Problem:
    rng = np.random.default_rng([seed, dim, 1])
    w = 0.9 * _spectral_normalise(rng.standard_normal((dim, dim)))
    return _tanh_problem(
        "gauss", "gauss", w, 1.0, batch, rng, "tanh(z Wᵀ + x Uᵀ), ‖W‖₂ = 0.9, x ~ N(0, 1)"
    )


def slow_modes(dim: int, batch: int, rho: float = 0.99, seed: int = 0) -> Problem:
    rng = np.random.default_rng([seed, dim, 2])
    v = _orthonormal(rng, dim, 3)
    w = 0.5 * _spectral_normalise(rng.standard_normal((dim, dim))) + rho * v @ v.T
    return _tanh_problem(
        f"slow-modes-{rho:g}", "slow-modes", w, 0.1, batch, rng,
        f"tanh(z Wᵀ + x Uᵀ), W = 0.5·G/‖G‖₂ + {rho:g}·V Vᵀ (3 slow modes), x ~ N(0, 0.1²)",
    )


def orthogonal(dim: int, batch: int, seed: int = 0) -> Problem:
    rng = np.random.default_rng([seed, dim, 3])
    w = 0.95 * _orthonormal(rng, dim, dim)
    return _tanh_problem(
        "orthogonal", "orthogonal", w, 0.1, batch, rng,
        "tanh(z Wᵀ + x Uᵀ), W = 0.95·orthogonal (eigenvalues on a circle), x ~ N(0, 0.1²)",
    )


def noncontractive(dim: int, batch: int, seed: int = 0) -> Problem:
    rng = np.random.default_rng([seed, dim, 4])
    v = _orthonormal(rng, dim, 3)
    a = 0.5 * _spectral_normalise(rng.standard_normal((dim, dim))) + v @ np.diag(
        [-2.0, -1.5, 1.5]
    ) @ v.T
    b = rng.standard_normal((batch, dim))
    root = np.linalg.solve((np.eye(dim) - a).T, b.T).T  # z (I − A) = b
    return Problem(
        name="noncontractive", family="noncontractive", dim=dim, f=linear_map,
        z0=jnp.zeros((batch, dim), jnp.float32),
        args=(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)), in_axes=(None, 0),
        diff_argnums=(0, 1), root=jnp.asarray(root, jnp.float32),
        note="z A + b, A = 0.5·G/‖G‖₂ + V diag(−2, −1.5, 1.5) Vᵀ (spectral radius ≈ 2)",
    )


def nonlinear(dim: int, batch: int, seed: int = 0) -> Problem:
    """The small nonlinear system; its size is always :data:`NONLINEAR_DIM` (``dim`` unused)."""
    del dim
    d = NONLINEAR_DIM
    rng = np.random.default_rng([seed, d, 5])
    q = _orthonormal(rng, d, d)
    m = q @ np.diag(np.linspace(0.2, 2.5, d)) @ q.T
    root = rng.standard_normal((batch, d))
    return Problem(
        name="nonlinear", family="nonlinear", dim=d, f=cubic_map,
        z0=jnp.zeros((batch, d), jnp.float32),
        args=(jnp.asarray(m, jnp.float32), jnp.asarray(root, jnp.float32)), in_axes=(None, 0),
        diff_argnums=(0, 1), root=jnp.asarray(root, jnp.float32),
        note=f"z − (z − z*) M − 0.1·(z³ − z*³), d = {d}, M ≻ 0 with eigenvalues in [0.2, 2.5]",
    )


def transformer_problem(
    dim: int, batch: int, seed: int = 0, checkpoint: Optional[str] = None
) -> Problem:
    """The DEQ-Transformer block of :mod:`models` (see :mod:`benchmarks.transformer_problem`,
    loaded only here: it needs the model and its data).

    ``dim`` is unused: the model fixes its own size. Raises :class:`ProblemUnavailable`
    with the reason when :mod:`models` cannot provide the block.
    """
    del dim
    return importlib.import_module("benchmarks.transformer_problem").build(batch, seed, checkpoint)


def from_triple(name: str, built: Sequence, note: str = "") -> Problem:
    """A :class:`Problem` from ``(f, z0, args)`` or ``(f, z0, args, in_axes)``.

    Without ``in_axes`` every argument is taken as shared by all samples. Gradients are
    taken with respect to every argument that has a floating leaf.
    """
    if not isinstance(built, (tuple, list)) or len(built) not in (3, 4):
        raise TypeError(
            f"problem {name!r} must be built as (f, z0, args) or (f, z0, args, in_axes), "
            f"got {type(built).__name__}"
        )
    f, z0, args = built[:3]
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    in_axes = tuple(built[3]) if len(built) == 4 else (None,) * len(args)
    if len(in_axes) != len(args):
        raise ValueError(f"problem {name!r}: in_axes has {len(in_axes)} entries for {len(args)} args")
    if any(axis not in (0, None) for axis in in_axes):
        raise ValueError(f"problem {name!r}: in_axes entries must be 0 or None, got {in_axes}")
    z0 = jax.tree_util.tree_map(jnp.asarray, z0)
    leaves = jax.tree_util.tree_leaves(z0)
    if not leaves or any(jnp.ndim(leaf) == 0 for leaf in leaves):
        raise ValueError(f"problem {name!r}: z0 needs a batch axis 0 on every leaf")
    diff = tuple(
        i for i, arg in enumerate(args)
        if any(jnp.issubdtype(jnp.result_type(a), jnp.floating)
               for a in jax.tree_util.tree_leaves(arg))
    )
    dim = int(sum(np.prod(jnp.shape(leaf)[1:]) for leaf in leaves))
    return Problem(
        name=name, family=name, dim=dim, f=f, z0=z0, args=args, in_axes=in_axes,
        diff_argnums=diff, note=note,
    )


def user_problem(spec: str) -> Problem:
    """The problem returned by ``module:function`` (called with no arguments).

    The function returns ``(f, z0, args)``, or ``(f, z0, args, in_axes)`` where ``in_axes``
    marks each argument as batched (``0``) or shared (``None``, the default). ``z0`` carries
    the batch on axis 0 of every leaf.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--problem expects 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--problem {spec!r}: cannot import module {module_name!r} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"--problem {spec!r}: {module_name!r} has no callable {attr!r}")
    return from_triple(attr, fn(), note=f"user problem {spec}")


# name -> builder(dim, batch, seed) for the built-in problems, in table order.
BUILDERS: dict[str, Callable[..., Problem]] = {
    "gauss": gauss,
    **{
        f"slow-modes-{rho:g}": functools.partial(slow_modes, rho=rho) for rho in SLOW_RHOS
    },
    "orthogonal": orthogonal,
    "noncontractive": noncontractive,
    "nonlinear": nonlinear,
}
# Problems whose size does not follow --dims: built once, at their own size.
FIXED_SIZE = frozenset({"nonlinear", "transformer"})
OPTIONAL = ("transformer",)


def select(names: Sequence[str]) -> list[str]:
    """Expand problem names: an exact name, or a family prefix (``slow-modes`` → all ρ)."""
    known = [*BUILDERS, *OPTIONAL]
    chosen: list[str] = []
    for name in names:
        matches = [k for k in known if k == name] or [k for k in known if k.startswith(name + "-")]
        if not matches:
            raise ValueError(f"unknown problem {name!r}; known: {', '.join(known)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def build(
    name: str, dim: int, batch: int, seed: int = 0, checkpoint: Optional[str] = None
) -> Problem:
    """Build the built-in problem ``name`` (see :data:`BUILDERS` and ``transformer``)."""
    if name == "transformer":
        return transformer_problem(dim, batch, seed, checkpoint)
    return BUILDERS[name](dim, batch, seed=seed)
