"""The engine: run a pruner inside a transformers VLM's prefill.

    >>> with tokenprune.prune(model, "adaptprune", keep=0.1, layer=2) as run:  # doctest: +SKIP
    ...     model.generate(**inputs)

Modules: `session` (the ``prune`` block and its hooks), `tap` (queries and keys through
transformers' AttentionInterface), `attention` (attention cues from them), `compact`
(shortening a batch to its kept tokens), `anatomy` (finding the language model).
"""

from tokenprune.engine.session import PruneBlock, PrunedSample, PruneRun, prune

__all__ = ["PruneBlock", "PruneRun", "PrunedSample", "prune"]
