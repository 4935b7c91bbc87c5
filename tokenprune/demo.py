"""The ``tokenprune demo``: prune a LLaVA-1.5-shaped model inside ``generate()``.

Offline and CPU-only. By default (``model="shapes"``) the model is the small trained one
that ships with tokenprune (`tokenprune.trained`: synthetic shape scenes, yes/no
questions): the table gets each run's accuracy on held-out questions, and the pictures
show the trained model's attention and what each recipe keeps of a held-out scene.
``model="llava"`` has LLaVA-1.5's geometry (CLIP vision tower at 336 px in
14 px patches: 576 visual tokens on a 24 x 24 grid, a Llama text model) but tiny, random
weights, so its attention carries no meaning: the demo shows the mechanics (which tokens a
recipe keeps, how the prefill and the KV cache shrink), not the quality of the choices.
``model="qwen2_5_vl"`` runs a Qwen2.5-VL-7B-shaped model instead (a 392 px image in 28 x 28
patches of 14 px, window attention, 2 x 2 merge: 196 tokens on a 14 x 14 grid, M-RoPE).

    >>> from tokenprune import demo
    >>> results = demo.run(demo.DemoConfig(recipes=("fastv",), repeats=1, new_tokens=2,
    ...                                    text_layers=3, hidden=64))   # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tokenprune.cues import ATTENTION_CUES
from tokenprune.errors import SpecError
from tokenprune.layout import Layout
from tokenprune.model_configs import (
    BOS_ID,
    EOS_ID,
    IMAGE_SIZE,
    PAD_ID,
    PATCH_SIZE,
    clip_vision_config,
    llava_config,
    mrope_parameters,
    qwen2_5_vl_vision,
    text_config,
)
from tokenprune.pruner import pruner as build_pruner
from tokenprune.registry import get_registry
from tokenprune.selection import Keep, Selection, resolve_keep

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "DEFAULT_RECIPES",
    "MODELS",
    "NOTICE",
    "SHAPES_NOTICE",
    "DemoConfig",
    "Result",
    "build_inputs",
    "build_model",
    "build_processor",
    "build_qwen2_5_vl",
    "format_table",
    "image_size",
    "pixel_values_of",
    "qwen_pixel_values_of",
    "run",
    "visual_tokens",
    "write_pictures",
]

#: Recipes the demo runs unless told otherwise: the two methods and four Table 5 baselines.
DEFAULT_RECIPES = ("fastv", "adaptprune", "random", "grid_max", "avg_pool", "last")

NOTICE = (
    "Note: the model has random weights, so its attention (and the text it generates) is\n"
    "meaningless. The table shows real costs of this model shape; the pictures show the\n"
    "selection mechanics (which cells each recipe keeps), not which tokens matter."
)

SHAPES_NOTICE = (
    "Note: the model is tokenprune's small trained shapes model (tokenprune.trained); the\n"
    "prompt is the first held-out question, and 'accuracy' is each run's share of right\n"
    "yes/no answers on the first held-out questions (chance 50%)."
)

VISUAL_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 576
#: The demo's models; ``qwen2_5_vl``: Qwen2.5-VL-7B's 28 x 28 patch grid of a 392 px image.
MODELS = ("shapes", "llava", "qwen2_5_vl")
#: Text layers of the trained shapes model (`tokenprune.trained`).
SHAPES_TEXT_LAYERS = 4
QWEN_PATCHES, QWEN_MERGE = 28, 2
QWEN_IMAGE_SIZE = QWEN_PATCHES * PATCH_SIZE  # 392
QWEN_VISUAL_TOKENS = (QWEN_PATCHES // QWEN_MERGE) ** 2  # 196
#: CLIP's normalisation, as the LLaVA-1.5 image processor applies it.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VOCAB_SIZE, IMAGE_TOKEN_ID = 1024, 1023
#: Qwen-VL's video placeholder and ``<|vision_start|>`` / ``<|vision_end|>`` in the demo vocabulary.
VIDEO_TOKEN_ID, VISION_START_ID, VISION_END_ID = 1022, 1020, 1021


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run.

    Attributes:
        keep: kept fraction in (0, 1] of the 576 visual tokens, or a count.
        recipes: registered recipe names to compare with the unpruned model.
        layer: K; layers ``0..K-1`` see every token, layers ``K..`` the kept ones.
        seed: seeds the weights, the prompt and random recipes.
        new_tokens: tokens ``generate()`` produces per run (greedy).
        repeats: timing rounds; each run reports its fastest prefill.
        text_layers, hidden: depth and width of the random text model (not ``"shapes"``).
        model: ``"shapes"`` (the trained shapes model), ``"llava"`` (random weights,
            LLaVA-1.5's geometry) or ``"qwen2_5_vl"`` (random weights, Qwen2.5-VL-7B's).
        questions: held-out questions each run answers for the accuracy column
            (``"shapes"`` only; 0: no accuracy column).
    """

    keep: Keep = 0.1
    recipes: tuple[str, ...] = DEFAULT_RECIPES
    layer: int = 2
    seed: int = 0
    new_tokens: int = 8
    repeats: int = 3
    text_layers: int = 8
    hidden: int = 512
    model: str = "shapes"
    questions: int = 48

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise SpecError(f"model: expected one of {', '.join(MODELS)}, got {self.model!r}")
        for name in ("layer", "new_tokens", "repeats", "text_layers", "hidden", "questions"):
            value = getattr(self, name)
            low = 0 if name in ("layer", "questions") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SpecError(f"{name}: expected an int >= {low}, got {value!r}")
        depth = SHAPES_TEXT_LAYERS if self.model == "shapes" else self.text_layers
        if self.layer >= depth:
            where = "the shapes model's" if self.model == "shapes" else "text_layers ="
            raise SpecError(
                f"layer: expected a layer below {where} {depth} (layers 0..{depth - 1}), got {self.layer}"
            )
        if self.hidden % 8:
            raise SpecError(f"hidden: expected a multiple of 8 (8 attention heads), got {self.hidden}")
        if not self.recipes:
            raise SpecError("recipes: expected at least one recipe name, got none")
        repeated = sorted({n for n in self.recipes if self.recipes.count(n) > 1})
        if repeated:
            raise SpecError(f"recipes: expected each name once, got {', '.join(repeated)} more than once")
        registry = get_registry()
        for name in self.recipes:
            registry.get("recipe", name)  # unknown names raise with close matches
        # Checked here, not after the unpruned run: keep's value and range, and recipes
        # whose attention cue needs a layer before the pruning layer.
        resolve_keep(self.keep, torch.tensor([visual_tokens(self.model)]))
        for name in self.recipes:
            needs = build_pruner(name, keep=self.keep).requires & ATTENTION_CUES
            if needs and self.layer == 0:
                raise SpecError(
                    f"layer: recipe '{name}' needs the attention of the layer before the "
                    "pruning layer, so expected layer >= 1, got 0"
                )


@dataclass
class Result:
    """What one run measured.

    Attributes:
        name: the recipe, or ``"unpruned"``.
        kept, total: visual tokens kept from layer K on, of all visual tokens.
        prefill_s: fastest wall time of the prefill (``generate`` of one token) over
            the timing rounds.
        kv_tokens: per text layer, the sequence length its KV cache holds after
            ``generate`` (prompt tokens it kept plus all generated tokens but the last,
            which is never fed back).
        kv_bytes: per text layer, bytes of its keys and values.
        generated: the generated token ids.
        selection, layout: the last prefill's choice (None when unpruned).
        accuracy: right answers on the held-out questions (``"shapes"``; else None).
        attention: ``(1, N)`` the unpruned model's last-token attention to the visual
            tokens in layer K-1 (``"shapes"``, unpruned row, K >= 1; else None).
    """

    name: str
    kept: int
    total: int
    prefill_s: float
    kv_tokens: list[int]
    kv_bytes: list[int]
    generated: list[int]
    selection: Selection | None = None
    layout: Layout | None = field(default=None, repr=False)
    accuracy: float | None = None
    attention: Tensor | None = field(default=None, repr=False)


def visual_tokens(model: str) -> int:
    """Visual tokens of the demo prompt of ``model``: 576 (LLaVA) or 196 (Qwen2.5-VL)."""
    return QWEN_VISUAL_TOKENS if model == "qwen2_5_vl" else VISUAL_TOKENS


def image_size(model: str) -> int:
    """Side in pixels of the demo image of ``model``: 336 (LLaVA) or 392 (Qwen2.5-VL)."""
    return QWEN_IMAGE_SIZE if model == "qwen2_5_vl" else IMAGE_SIZE


# ------------------------------------------------------------------------- the model
def build_model(seed: int = 0, text_layers: int = 8, hidden: int = 512, model: str = "llava") -> Any:
    """A `LlavaForConditionalGeneration` of LLaVA-1.5's geometry with random weights
    (``model="qwen2_5_vl"``: see `build_qwen2_5_vl`).

    CLIP vision tower: 336 px, 14 px patches (24 x 24 = 576 tokens), 2 layers of width
    64; vision layer -2, CLS dropped (``"default"``), as llava-1.5. Text: a Llama model of
    ``text_layers`` layers of width ``hidden`` with 8 heads, weights drawn with std 0.1.
    Eval mode, float32.
    """
    if model == "qwen2_5_vl":
        return build_qwen2_5_vl(seed, text_layers, hidden)
    from transformers import LlamaConfig, LlavaForConditionalGeneration

    vision = clip_vision_config(hidden_size=64, layers=2, heads=2, projection_dim=64)
    config = llava_config(vision, LlamaConfig(**_text(text_layers, hidden)), IMAGE_TOKEN_ID)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval()


def _text(layers: int, hidden: int, **extra: Any) -> dict[str, Any]:
    return text_config(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        layers=layers,
        heads=8,
        kv_heads=8,
        max_positions=4096,
        # Wider than the default 0.02, so that greedy decoding of the random model does
        # not repeat one token and the generated ids can show where pruning changes them.
        initializer_range=0.1,
        **extra,
    )


def build_qwen2_5_vl(seed: int = 0, text_layers: int = 8, hidden: int = 512) -> Any:
    """A `Qwen2_5_VLForConditionalGeneration` of Qwen2.5-VL-7B's geometry, random weights.

    Vision: 14 px patches, 2 frames per temporal patch, 112 px attention windows with full
    attention in every eighth block (2 blocks of width 64 here: one window, one full), 2 x 2
    merge. Text: a Qwen2 model of ``text_layers`` layers of width ``hidden`` with 8 heads
    and M-RoPE (the 7B's split of the rotary frequencies over (t, h, w), 1 : 1.5 : 1.5),
    weights drawn with std 0.1. Eval mode, float32.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        vision_config=qwen2_5_vl_vision(hidden_size=64, out_hidden_size=hidden, window_size=112),
        text_config=_text(text_layers, hidden, rope_parameters=mrope_parameters(hidden // 8, 1000000.0)),
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID,
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


#: LLaVA-1.5's conversation format: ``USER: <image>\n{question} ASSISTANT:``.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_processor() -> Any:
    """A `LlavaProcessor` for `build_model`'s model, built offline: LLaVA-1.5's image
    processing (CLIP, 336 px), its chat format, and a byte-level tokenizer whose ids fit
    the model's vocabulary (bytes at 3..258, ``<image>`` at 1023). It stands in for
    ``AutoProcessor.from_pretrained("llava-hf/llava-1.5-7b-hf")`` where nothing can be
    downloaded; the generated text of a random-weight model is random bytes.
    """
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlavaProcessor, PreTrainedTokenizerFast

    specials = {"<pad>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID, "<image>": IMAGE_TOKEN_ID}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {**specials, **{char: 3 + i for i, char in enumerate(alphabet)}}
    # The other ids decode to pairs of letters, commas and spaces ("Ġ" is a byte-level space),
    # so that a random model's output reads as (meaningless) text, not as nothing.
    letters = [*"abcdefghijklmnopqrstuvwxyz,", "Ġ"]
    pairs = [(a, b) for a in letters for b in letters][: IMAGE_TOKEN_ID - len(vocab) + 1]
    vocab.update({a + b: len(vocab) - 1 + i for i, (a, b) in enumerate(pairs)})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    # Without torchvision, transformers' default CLIP image processor falls back to the
    # PIL one with a warning; ask for the PIL one directly where this version has it.
    try:
        images = transformers.CLIPImageProcessorPil
    except AttributeError:
        images = transformers.CLIPImageProcessor
    return LlavaProcessor(
        image_processor=images(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            image_mean=_CLIP_MEAN, image_std=_CLIP_STD,
        ),
        tokenizer=fast,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def pixel_values_of(image: PILImage.Image) -> Tensor:
    """``(1, 3, 336, 336)`` float pixel values: ``image`` resized to 336 x 336 and
    normalised with CLIP's mean and std (what the LLaVA-1.5 processor does)."""
    rgb = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE))
    data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    pixels = data.view(IMAGE_SIZE, IMAGE_SIZE, 3).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(_CLIP_STD).view(3, 1, 1)
    return ((pixels - mean) / std).unsqueeze(0)


def qwen_pixel_values_of(image: PILImage.Image) -> tuple[Tensor, Tensor]:
    """``(784, 1176)`` pixel rows and ``image_grid_thw (1, 3)`` = (1, 28, 28): ``image``
    resized to 392 x 392, normalised with CLIP's mean and std and cut into patches by the
    Qwen2-VL image processor's own ``patchify`` (what the Qwen2.5-VL processor does)."""
    import numpy as np
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rgb = image.convert("RGB").resize((QWEN_IMAGE_SIZE, QWEN_IMAGE_SIZE))
    pixels = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    pixels = (pixels - np.array(_CLIP_MEAN, dtype=np.float32)[:, None, None]) / np.array(
        _CLIP_STD, dtype=np.float32
    )[:, None, None]
    rows, grid_h, grid_w = Qwen2VLImageProcessorPil().patchify(pixels, PATCH_SIZE, QWEN_MERGE, 2)
    return torch.from_numpy(np.ascontiguousarray(rows)), torch.tensor([[1, grid_h, grid_w]])


def build_inputs(image: PILImage.Image, seed: int = 0, model: str = "llava") -> dict[str, Tensor]:
    """A one-sample prompt ``[BOS] system... <image> x 576 question...`` with random
    text token ids, and the image's pixel values. Qwen2.5-VL: ``<|vision_start|>``, 196
    placeholders, ``<|vision_end|>``, with ``image_grid_thw`` and ``mm_token_type_ids``
    (which its M-RoPE positions need)."""
    generator = torch.Generator().manual_seed(seed)
    system = torch.randint(3, IMAGE_TOKEN_ID, (5,), generator=generator)
    question = torch.randint(3, IMAGE_TOKEN_ID, (10,), generator=generator)
    if model == "qwen2_5_vl":
        image_tokens = torch.tensor([VISION_START_ID, *[IMAGE_TOKEN_ID] * QWEN_VISUAL_TOKENS, VISION_END_ID])
        input_ids = torch.cat([torch.tensor([BOS_ID]), system, image_tokens, question]).unsqueeze(0)
        pixel_values, grid = qwen_pixel_values_of(image)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": (input_ids == IMAGE_TOKEN_ID).long(),
            "pixel_values": pixel_values,
            "image_grid_thw": grid,
        }
    image_tokens = torch.full((VISUAL_TOKENS,), IMAGE_TOKEN_ID)
    input_ids = torch.cat([torch.tensor([BOS_ID]), system, image_tokens, question]).unsqueeze(0)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": pixel_values_of(image),
    }


# -------------------------------------------------------------------------- measuring
def _generate(model: Any, inputs: dict[str, Tensor], new_tokens: int) -> Any:
    return model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        return_dict_in_generate=True,
        pad_token_id=PAD_ID,  # 0 in the shapes model's vocabulary too
    )


def _cache_sizes(output: Any) -> tuple[list[int], list[int]]:
    """Per layer: sequence length and bytes of keys + values in ``output``'s cache."""
    cache = output["cache"] if "cache" in output else output["past_key_values"]
    tokens, sizes = [], []
    for layer in cache.layers:
        keys, values = layer.keys, layer.values
        tokens.append(int(keys.shape[-2]))
        sizes.append(keys.numel() * keys.element_size() + values.numel() * values.element_size())
    return tokens, sizes


@contextmanager
def _pruning(model: Any, config: DemoConfig, recipe: str | None) -> Iterator[Any]:
    """The engine-facing part: ``recipe`` applied through `tokenprune.prune` (nothing
    for the unpruned run). Yields the engine's run record, or None."""
    if recipe is None:
        yield None
        return
    import tokenprune

    generator = torch.Generator().manual_seed(config.seed)
    with tokenprune.prune(
        model, recipe, keep=config.keep, layer=config.layer, generator=generator
    ) as pruning:
        yield pruning


def _record(model: Any, inputs: dict[str, Tensor], config: DemoConfig, name: str) -> Result:
    """Generate once and record the cache, the generated ids and the last prefill's
    choice. The time comes later, in rounds: this call is also their warm-up (first-call
    allocations, compiled selectors)."""
    recipe = None if name == "unpruned" else name
    total = int((inputs["input_ids"] == _image_token(model)).sum())
    prompt = inputs["input_ids"].shape[1]
    with torch.inference_mode(), _pruning(model, config, recipe) as pruning:
        output = _generate(model, inputs, config.new_tokens)
    selection = layout = None
    kept = total
    if pruning is not None:
        if pruning.selection is None or pruning.layout is None:
            raise RuntimeError(f"recipe {recipe!r}: the engine recorded no pruned prefill")
        selection, layout = pruning.selection, pruning.layout
        kept = int(selection.counts[0])
    tokens, sizes = _cache_sizes(output)
    generated = output["sequences"][0, prompt:].tolist()
    return Result(name, kept, total, math.inf, tokens, sizes, generated, selection, layout)


def _image_token(model: Any) -> int:
    config = model.config
    return int(getattr(config, "image_token_id", None) or config.image_token_index)


def _accuracy(model: Any, processor: Any, config: DemoConfig, name: str, batch: int = 24) -> float:
    """Share of right answers on the first ``config.questions`` held-out questions,
    answered in batches inside one pruning block."""
    from tokenprune import scenes, trained

    split = scenes.make_split(trained.HELD_OUT_SEED, config.questions)
    right = 0
    with _pruning(model, config, None if name == "unpruned" else name):
        for begin in range(0, config.questions, batch):
            indices = range(begin, min(begin + batch, config.questions))
            got = trained.answer(model, processor, split, indices)
            right += sum(g == split.questions[i].answer for g, i in zip(got, indices))
    return right / config.questions


@torch.inference_mode()
def attention_to_image(model: Any, inputs: dict[str, Tensor], layer: int) -> Tensor:
    """``(1, N)``: the last prompt token's attention to each visual token in decoder layer
    ``layer``, averaged over heads (what FastV ranks by when pruning at ``layer + 1``)."""
    # eager everywhere: the forward asks the vision tower for attentions too
    before = {
        "text_config": model.config.text_config._attn_implementation,
        "vision_config": model.config.vision_config._attn_implementation,
    }
    model.set_attn_implementation("eager")
    try:
        out = model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    last = out.attentions[layer][0, :, -1].mean(0)  # (L,)
    return last[inputs["input_ids"][0] == _image_token(model)].unsqueeze(0)


def shapes_question(seed: int = 0) -> Any:
    """The held-out question the ``"shapes"`` demo asks (`tokenprune.scenes.Question`)."""
    from tokenprune import scenes, trained

    return scenes.make_split(trained.HELD_OUT_SEED, seed + 1).questions[seed]


def _shapes_sample(seed: int) -> tuple[Any, Any, dict[str, Tensor], PILImage.Image, Any]:
    """The trained shapes model, its processor, the prompt of held-out question ``seed``
    with its scene, and the question."""
    from tokenprune import scenes, trained

    model, processor = trained.load()
    split = scenes.make_split(trained.HELD_OUT_SEED, seed + 1)
    question = split.questions[seed]
    inputs = trained.batch_inputs(processor, split, [seed])
    return model, processor, inputs, scenes.draw(split.scenes[question.scene]), question


def _time_prefill(model: Any, inputs: dict[str, Tensor], config: DemoConfig, name: str) -> float:
    """Seconds of one prefill: ``generate`` of a single new token."""
    with torch.inference_mode(), _pruning(model, config, None if name == "unpruned" else name):
        start = time.perf_counter()
        _generate(model, inputs, 1)
        return time.perf_counter() - start


def run(
    config: DemoConfig | None = None,
    progress: Callable[[Sequence[str]], Any] | None = None,
) -> tuple[list[Result], PILImage.Image]:
    """Build the model, run it unpruned and with every recipe of ``config``.

    First each run generates once (after a warm-up); then ``config.repeats`` rounds time
    one prefill of every run in turn, and each run reports its fastest. Rounds spread
    any load from other processes over all runs alike.

    Args:
        config: the settings (`DemoConfig` defaults when None).
        progress: wraps the list of step names to report progress (e.g. ``tqdm``).

    Returns:
        one `Result` per run (unpruned first), and the input image.
    """
    from tokenprune.viz import synthetic_image

    config = config or DemoConfig()
    processor = None
    if config.model == "shapes":
        model, processor, inputs, image, _ = _shapes_sample(config.seed)
    else:
        model = build_model(config.seed, config.text_layers, config.hidden, config.model)
        side = image_size(config.model)
        image = synthetic_image(side, side, seed=config.seed)
        inputs = build_inputs(image, config.seed, config.model)
    names: list[str] = ["unpruned", *config.recipes]
    # A step that compiles says so: the first run of a compiled selector waits for it.
    labels = {_step_label(name, config): name for name in names}
    rounds = [f"timing round {i + 1}/{config.repeats}" for i in range(config.repeats)]
    results: dict[str, Result] = {}
    for step in progress([*labels, *rounds]) if progress else [*labels, *rounds]:
        if step in rounds:
            for name in names:
                seconds = _time_prefill(model, inputs, config, name)
                results[name].prefill_s = min(results[name].prefill_s, seconds)
        else:
            name = labels[step]
            results[name] = _record(model, inputs, config, name)
            if processor is not None and config.questions:
                results[name].accuracy = _accuracy(model, processor, config, name)
            if processor is not None and name == "unpruned" and config.layer >= 1:
                results[name].attention = attention_to_image(model, inputs, config.layer - 1)
    return [results[name] for name in names], image


def _step_label(name: str, config: DemoConfig) -> str:
    """``name``, or ``"adaptprune (compiling its selector)"`` where its first run compiles."""
    import tokenprune

    if name == "unpruned" or not tokenprune.compile_enabled():
        return name
    selector = tokenprune.pruner(name, keep=config.keep).selector
    return f"{name} (compiling its selector)" if getattr(selector, "compiles", False) else name


# ---------------------------------------------------------------------------- output
def _per_layer(values: Sequence[int]) -> str:
    """``[600, 600, 80, 80, 80]`` -> ``"600 x2, 80 x3"``."""
    parts: list[list[int]] = []
    for v in values:
        if parts and parts[-1][0] == v:
            parts[-1][1] += 1
        else:
            parts.append([v, 1])
    return ", ".join(f"{v} x{n}" if n > 1 else str(v) for v, n in parts)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading items ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def format_table(results: Sequence[Result], generated: int = 6) -> str:
    """A plain-text table of ``results``. Speedups and "same ids" (generated ids shared
    with the first row, from the start) are relative to the first (unpruned) row."""
    base = results[0]
    scored = any(r.accuracy is not None for r in results)
    header = (
        "recipe", "visual kept", *(["accuracy"] if scored else []), "prefill ms", "speedup",
        "KV tokens/layer", "KV KiB/layer", "same ids", f"first {generated} ids",
    )
    rows = [header]
    for r in results:
        ids = " ".join(str(t) for t in r.generated[:generated])
        rows.append(
            (
                r.name,
                f"{r.kept}/{r.total}",
                *([f"{100 * r.accuracy:.1f}%" if r.accuracy is not None else "-"] if scored else []),
                f"{r.prefill_s * 1e3:.0f}",
                f"{base.prefill_s / r.prefill_s:.2f}x",
                _per_layer(r.kv_tokens),
                _per_layer([round(b / 1024) for b in r.kv_bytes]),
                f"{_common_prefix(r.generated, base.generated)}/{len(r.generated)}",
                ids,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_pictures(results: Sequence[Result], image: PILImage.Image, out: str | Path) -> list[Path]:
    """One PNG per pruned run (kept cells over the input image), the Gaussian correction
    map, the input image, a sheet of all selections and, where the unpruned run recorded
    it, the model's attention over the image; returns the written paths."""
    from tokenprune.strategies.transforms import gaussian_map
    from tokenprune.viz import draw_selection, draw_values, tile_pictures

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    image_path = out / "input.png"
    image.save(image_path)
    written.append(image_path)
    sheet = []
    layout = None
    for r in results:
        if r.selection is None or r.layout is None:
            continue
        layout = r.layout
        title = f"{r.name}: {r.kept} of {r.total} kept"
        picture = draw_selection(r.layout, r.selection, image, title=title)
        path = out / f"{r.name}.png"
        picture.save(path)
        written.append(path)
        sheet.append(("", picture))
    if layout is not None:
        gaussian = draw_values(
            layout, gaussian_map(layout), title="gaussian correction factor", vmin=0.0, vmax=1.0
        )
        path = out / "gaussian.png"
        gaussian.save(path)
        written.append(path)
    attention = results[0].attention if results else None
    if layout is not None and attention is not None:
        picture = draw_values(
            layout, attention, image,
            title="last prompt token's attention",
        )
        path = out / "attention.png"
        picture.save(path)
        written.append(path)
        sheet.insert(0, ("", picture))
    if sheet:
        path = out / "selections.png"
        tile_pictures(sheet, columns=3).save(path)
        written.append(path)
    return written
