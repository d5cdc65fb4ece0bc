"""The training loop of one run: optimiser, schedule, label correction and reweighting.

:mod:`~tether.finetune.training.config` (``train:`` of a recipe) imports no torch.
"""
