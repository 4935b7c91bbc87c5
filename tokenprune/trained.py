"""A tiny LLaVA-1.5-shaped VLM for synthetic shape scenes (`tokenprune.scenes`): its
processor, prompt, held-out split and loader.

The model is a real `LlavaForConditionalGeneration` of LLaVA-1.5's token geometry
(CLIP-style vision tower at 336 px in 14 px patches: 576 visual tokens on a 24 x 24 grid,
vision layer -2, CLS dropped; a Llama text model), trained from scratch by
``training/train_shapes.py``; the checkpoint ships in the package
(``tokenprune/models/shapes-llava``, `MODEL_DIR`), with the accuracy it measured in its
``training.json``. Its prompt puts the question before the image::

    <s> USER: is there a red triangle ? <image> x 576 ASSISTANT:

and the next token is ``yes`` or ``no``.

    >>> model, processor = load()                                   # doctest: +SKIP
    >>> split = scenes.make_split(seed=HELD_OUT_SEED, questions=8)   # doctest: +SKIP
    >>> answer(model, processor, split, range(8))                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tokenprune import scenes

__all__ = [
    "CHAT_TEMPLATE",
    "HELD_OUT_QUESTIONS",
    "HELD_OUT_SEED",
    "MODEL_DIR",
    "answer",
    "batch_inputs",
    "build_processor",
    "load",
    "prompt",
]

#: Where a checkpoint written by ``training/train_shapes.py --out`` is looked for by default.
MODEL_DIR = Path(__file__).resolve().parent / "models" / "shapes-llava"
#: The held-out split: `scenes.make_split(HELD_OUT_SEED, HELD_OUT_QUESTIONS)`; training
#: draws its scenes from other seeds.
HELD_OUT_SEED, HELD_OUT_QUESTIONS = 1_000_003, 1200
SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
#: The prompt of `prompt` as a chat template, for tools that build prompts from chat
#: messages (lmms-eval): the user's text, then one ``<image>`` per image (a string content's
#: ``<image>`` moves behind its text), then ``ASSISTANT:``.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] | replace('<image>', '') | trim }}"
    "{% for _ in range(message['content'].count('<image>')) %} <image>{% endfor %}"
    "{% else %}{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] | trim }} {% endfor %}"
    "{% for part in message['content'] if part['type'] == 'image' %}<image> {% endfor %}{% endif %} "
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def prompt(question: str) -> str:
    """The text the processor receives for one question (it expands ``<image>`` to 576
    placeholders and prepends ``<s>``)."""
    return f"USER: {question} <image> ASSISTANT:"


def build_processor() -> Any:
    """A `LlavaProcessor` built offline: a word-level tokenizer over `scenes.WORDS` and a
    CLIP image processor at 336 px (pillow backend; torchvision is not needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

    words = [*SPECIAL, "USER:", "ASSISTANT:", *scenes.WORDS]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        extra_special_tokens={"image_token": "<image>"},
        chat_template=CHAT_TEMPLATE,
    )
    images = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def load(path: str | Path = MODEL_DIR) -> tuple[Any, Any]:
    """The trained model (eval mode, float32) and its processor from ``path``."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"path: expected a checkpoint folder written by training/train_shapes.py --out, got {str(path)!r}"
        )

    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    return model, LlavaProcessor.from_pretrained(path)


def batch_inputs(processor: Any, split: scenes.Split, indices: Sequence[int]) -> dict[str, Tensor]:
    """A left-padded batch of the questions ``split.questions[i]`` for ``i`` in
    ``indices``: ``input_ids``, ``attention_mask`` ``(B, L)`` and ``pixel_values``
    ``(B, 3, 336, 336)``."""
    questions = [split.questions[i] for i in indices]
    images = [scenes.draw(split.scenes[q.scene]) for q in questions]
    return dict(
        processor(
            images=images,
            text=[prompt(q.text) for q in questions],
            return_tensors="pt",
            padding=True,
        )
    )


@torch.inference_mode()
def answer(model: Any, processor: Any, split: scenes.Split, indices: Iterable[int]) -> list[str]:
    """The model's greedy one-token answers to ``split.questions[i]``, batched as given."""
    inputs = batch_inputs(processor, split, list(indices))
    out = model.generate(**inputs, max_new_tokens=1, do_sample=False)
    return processor.tokenizer.batch_decode(out[:, -1:])
