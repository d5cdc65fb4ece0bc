"""Adapters that put a Tether constraint into other people's training loops.

Each module imports its framework and is imported only by the user who needs it, so
``import tether`` never loads Lightning or transformers:

* :mod:`tether.integrations.lightning`: ``ConstraintCallback`` for a Lightning ``Trainer``
  (``pip install tether[lightning]``);
* :mod:`tether.integrations.huggingface`: ``ConstraintCallback`` for a transformers ``Trainer``
  (``pip install tether[transformers]``).

Any other loop needs no adapter: ``constraint.attach(optimizer)`` projects after every step the
optimiser takes (timm's train script, a plain PyTorch loop, a GradScaler loop).
"""
