"""The Haiku DEQ Transformer language model, its byte-level data and its training command.

Modules, one idea each:

- :mod:`models.data`: byte-level corpora, deterministic splits and resumable batches;
- :mod:`models.transformer`: the input-injection block ``f(z, x)``, the DEQ Transformer LM
  (``z* = f(z*, x)`` through ``implicit.haiku.DEQ``) and its explicit twins;
- :mod:`models.lm`: a training config to a transformed model, and the next-byte loss;
- :mod:`models.optim`: AdamW with warmup-cosine learning rate and gradient clipping;
- :mod:`models.step`: the train state and the compiled train/eval steps;
- :mod:`models.sharding`: data parallelism with ``Mesh`` + ``NamedSharding`` (multi-host too);
- :mod:`models.checkpoint`: sealed, atomic ``.npz`` checkpoints and the resume config check;
- :mod:`models.metrics`: the metrics JSON-lines file (tolerant of a torn last line) and its plot;
- :mod:`models.rundir`: the run directory's lock, atomic writes and stale-file cleanup;
- :mod:`models.peers`: a multi-process run that loses a process stops, naming it;
- :mod:`models.sample`: text generation;
- :mod:`models.solve_metrics`: the solves' convergence, counted for the metrics and the
  progress bar;
- :mod:`models.xla_setup`: the memory-minimising XLA schedule of the command-line programs;
- :mod:`models.config` and :mod:`models.train`: ``python -m models.train``.
"""
