"""lmms-eval plugin: ``--model tokenprune`` wraps lmms-eval's own Hugging Face model classes
(``base=llava_hf``, ``internvl_hf``, ``qwen2_5_vl``) with `tokenprune.prune`.

    lmms-eval --model tokenprune \\
        --model_args base=llava_hf,pretrained=PATH,recipe=adaptprune,keep=0.1,layer=2 \\
        --tasks pope --batch_size 8

Modules: `options` (``--model_args`` checked before loading), `batching` (merging the
base's one-sample ``generate`` calls into batches), `model` (the lmms-eval model classes;
imports lmms-eval), `entry` (the entry point), `shapes_pope` (a task over the synthetic
shapes split). Only `model` needs lmms-eval installed.
"""
