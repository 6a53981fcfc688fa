"""Runnable benchmarks: solver against solver, and DEQ against the explicit weight-tied net.

Entry points (each prints a markdown table; ``--help`` lists the flags):

* ``python -m benchmarks.compare_solvers`` — every registered solver and the installed
  peers (jaxopt, optimistix) on the built-in problems, a user's ``--problem``, and the
  DEQ-Transformer block: iterations, time, residual, gradient error, overhead, memory.
* ``python -m benchmarks.backward_modes`` — implicit (per backward solver), phantom, JFB
  and unrolled gradients against the exact one: cosine similarity, time, memory.
* ``python -m benchmarks.write_results`` — runs both and rewrites the README's Results
  section between its ``<!-- results:start -->`` / ``<!-- results:end -->`` markers.
* ``python -m benchmarks.deq_vs_explicit`` — the DEQ language model against its explicit
  twins (see that module).
* ``python -m benchmarks.memory_breakdown`` — the DEQ train step's peak memory with one
  part of its backward taken away at a time, against the explicit depth-16 stack.
* ``python -m benchmarks.overhead_floor`` — beside each ``fixed_point`` and ``broyden``
  solve, the floors under its overhead on this machine: the fixed cost of a compiled call,
  the reads of Broyden's buffer of terms, and the page faults per call.
* ``python -m benchmarks.device_check OUT_DIR`` — the prepared check on a GPU (about 8
  minutes; ``--quick`` on a CPU): correctness, solvers at GPU sizes, the DEQ LM against the
  Transformer baseline and the gradient modes, in one JSON and one Markdown table.

One module per entry point; what they share lives in a few modules named for what they
hold:

* :mod:`benchmarks.cli` — the shared flags, ``--quick``, ``--solver-option`` and the
  problems a run builds;
* :mod:`benchmarks.problems` — the :class:`~benchmarks.problems.Problem` type, the
  built-in problems and users' ``--problem module:function``
  (:mod:`benchmarks.transformer_problem`: the DEQ-Transformer block;
  :mod:`benchmarks.example_problem`: an example user problem);
* :mod:`benchmarks.contenders` — registered solvers and peers behind one interface;
* :mod:`benchmarks.reference` — float64 reference solutions and gradients, and the loss,
  gradient and residuals candidates are measured by;
* :mod:`benchmarks.timing` — compile ahead, warm up, ``block_until_ready``, round-robin
  medians, compiled memory, and the measuring loop;
* :mod:`benchmarks.output` — tables, JSON, CSV, plots and the machine line.

The package is installed with the toolkit: ``python -m benchmarks.compare_solvers
--problem mypkg.layers:make_problem`` compares the solvers on a user's own layer from
anywhere, which is one of the things the toolkit is for.
"""
