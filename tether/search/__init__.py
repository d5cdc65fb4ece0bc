"""Many fine-tuning runs: a study spec searched with Optuna, compared against the baselines.

- the spec and its parts: :mod:`~tether.search.spec`, :mod:`~tether.search.space`,
  :mod:`~tether.search.methods`, :mod:`~tether.search.samplers`;
- :mod:`~tether.search.storage`: Optuna storages that survive lost connections and dead
  workers;
- :mod:`~tether.search.execution`: studies, device slots, tickets, trials, worker processes;
- :mod:`~tether.search.results`: the final evaluation, the comparison table, the report.

``tether.search`` reads recipes through :mod:`tether.finetune.recipe` (which imports no
torch) and runs a fine-tuning only through the worker protocol
(:mod:`tether.finetune.worker`), so a trial runs in its own process and dies without harm.
"""
