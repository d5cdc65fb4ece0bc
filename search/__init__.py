"""Tether's search side: many fine-tuning runs, driven from the ``tether`` command line.

``search`` talks to a fine-tuning run only through the worker protocol
(:mod:`finetune.worker`), so a trial can run in its own process and die without harm.
"""
