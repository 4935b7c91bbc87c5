"""The engine: run pruners inside a transformers VLM's prefill.

```python
with tokenprune.prune(model, "adaptprune", keep=0.1, layer=2) as run:
    model.generate(**inputs)
```

Modules: `session` (the ``prune`` block and its hooks), `schedule` (prune points and
their pruners), `tap` (queries and keys through transformers' AttentionInterface),
`compact` (shortening a batch to its kept tokens). Family facts come from the model's
`tokenprune.Adapter`; cues from the registered `tokenprune.CueSource` classes.
"""

from tokenprune.engine.session import PruneBlock, PrunedSample, PruneRun, StageRecord, prune

__all__ = ["PruneBlock", "PruneRun", "PrunedSample", "StageRecord", "prune"]
