"""What Tether's tests and benchmarks share, and what a user's own tests may use.

- :mod:`~tether.testing.targets`: trial targets that cost nothing, run through the real
  launcher, trial processes and events (the harness measured without the fine-tuning);
- :mod:`~tether.testing.reference`: oracle implementations written from the formulas;
- :mod:`~tether.testing.specs`: tiny recipes and study specs on the offline digits task.
"""
