"""One fine-tuning run: a recipe in, a result out (models, data, regularisers, training).

``tether.finetune`` never imports ``tether.search``: the search harness runs a fine-tuning
only through the JSON-lines worker protocol (:mod:`tether.finetune.worker`), in a process of
its own. Its configuration modules (``recipe``, ``config`` and each component's ``config``)
import no torch, so that the search side can validate recipes without it.
"""
