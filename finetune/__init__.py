"""Tether's fine-tuning core: one run of one method, from a recipe to a result.

``finetune`` never imports ``search``: the search harness talks to a run only through the
JSON-lines worker protocol (:mod:`finetune.worker`).
"""

__version__ = "0.1.0"
