"""Train the committed shapes model (`tokenprune.trained`) from scratch, seeded.

    nice -n 19 python training/train_shapes.py --vision-steps 120 --vision-lr 3e-3 \
        --steps 600 --subsample 160 --subsample-start 40 --full-steps 20 --lr 3e-3 \
        --warmup 30 --per-scene 6 --read-weight 1.0 --width 64 --layers 4 \
        --out tokenprune/models/shapes-llava

Two stages, both on fresh synthetic scenes every step (`tokenprune.scenes`, seeds apart
from the held-out split's):

1. **Vision warm start.** The CLIP-style tower and LLaVA's projector learn per-patch labels
   through linear probes on the (normalised) projector output: the colour and the shape of
   the object under each patch centre, and whether the patch is in the left half. Every
   image gives 576 labels, so this converges in about a hundred steps.
2. **Question answering.** The tower is frozen; the projector and the Llama text model learn
   the next token (``yes`` / ``no``) after ``<s> USER: question <image> ASSISTANT:``, the
   question before the image so that image tokens can attend to it. Training-only helps
   for binding the question to the right patches: a probe on the image tokens entering
   layer ``--match-layer`` (does this patch belong to the object the question names?),
   the answer token's attention there (head 0) pulled onto that object's patches, and a
   length curriculum (every object patch plus a growing number of background patches, at
   their original positions; the last ``--full-steps`` see all 576).

Finally it measures accuracy on the held-out split through the processor and
``generate()`` (the path every user takes) and writes the checkpoint, tokenizer and
processor files and ``training.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenprune import scenes, trained

GRID, PATCH = 24, 14


def build_model(args: argparse.Namespace, vocab: int, image_token: int) -> torch.nn.Module:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vision = CLIPVisionConfig(
        image_size=336,
        patch_size=PATCH,
        hidden_size=args.vision_width,
        intermediate_size=args.vision_width * 2,
        # vision layer -2: the last layer is never used, as in LLaVA-1.5
        num_hidden_layers=args.vision_layers + 1,
        num_attention_heads=4,
    )
    text = LlamaConfig(
        vocab_size=vocab,
        hidden_size=args.width,
        intermediate_size=args.width * 2,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(args.seed)
    model = LlavaForConditionalGeneration(config)
    # CLIP's random position embeddings (std 0.02) left the left/right probe at chance for
    # 150 steps: start from a 2-D sine-cosine grid instead (learned from there on), whose
    # slowest column wave is already a left/right signal.
    with torch.no_grad():
        model.model.vision_tower.embeddings.position_embedding.weight.copy_(grid_positions(args.vision_width))
    return model


def grid_positions(width: int) -> Tensor:
    """``(1 + 576, width)``: zero for CLS, then per patch (row-major) sines and cosines of
    its column (first half) and row (second half) at periods 48, 24, 12, ..."""
    quarter = width // 4
    periods = 48 / 2 ** torch.arange(quarter, dtype=torch.float32) ** 0.5
    cells = torch.arange(GRID, dtype=torch.float32)
    angles = 2 * math.pi * cells[:, None] / periods  # (24, quarter)
    wave = torch.cat([angles.cos(), angles.sin()], dim=-1)  # (24, width / 2)
    col = wave.repeat(GRID, 1)
    row = wave.repeat_interleave(GRID, dim=0)
    return torch.cat([torch.zeros(1, width), torch.cat([col, row], dim=-1)])


def patch_labels(scene: scenes.Scene) -> tuple[Tensor, Tensor, Tensor]:
    """``(576,)`` colour (0 = background, 1..4), shape (0, 1..3) and left-half labels of the
    object under each patch centre."""
    grid = torch.from_numpy(np.asarray(scenes.object_map(scene), dtype=np.int64))
    centre = grid[PATCH // 2 :: PATCH, PATCH // 2 :: PATCH].reshape(-1)
    colour_of = torch.tensor([0] + [1 + list(scenes.COLOURS).index(o.colour) for o in scene.objects])
    shape_of = torch.tensor([0] + [1 + scenes.SHAPES.index(o.shape) for o in scene.objects])
    left = (torch.arange(GRID).repeat(GRID) < GRID // 2).long()
    return colour_of[centre], shape_of[centre], left


def vision_features(model: torch.nn.Module, pixels: Tensor) -> Tensor:
    """``(B, 576, H)`` projected features, the way LLaVA computes them (layer -2, no CLS)."""
    hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    return model.model.multi_modal_projector(hidden)


def schedule(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def train_vision(model, processor, args, log) -> None:
    rng = random.Random(args.seed + 1)
    width = model.config.text_config.hidden_size
    probes = torch.nn.Linear(width, 5 + 4 + 2)
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters()]
    optimiser = torch.optim.AdamW([*params, *probes.parameters()], lr=args.vision_lr, weight_decay=0.0)
    lr_at = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: schedule(s, args.vision_steps, 20))
    for step in range(args.vision_steps):
        batch = [scenes.random_scene(rng) for _ in range(args.vision_batch)]
        pixels = processor.image_processor([scenes.draw(s) for s in batch], return_tensors="pt")["pixel_values"]
        labels = [patch_labels(s) for s in batch]
        colour, shape, left = (torch.stack(x).view(-1) for x in zip(*labels))
        features = vision_features(model, pixels)
        # probes read normalised features: the projector's output starts at std ~0.02
        logits = probes(F.layer_norm(features, features.shape[-1:])).view(-1, 11)
        # objects cover a few percent of the patches: weigh the background down
        loss_c = F.cross_entropy(logits[:, :5], colour, weight=torch.tensor([0.1, 1, 1, 1, 1]))
        # shape on object patches only: background outnumbers them ~20 to 1 and would
        # teach "background" for every patch whose shape is not obvious
        on_object = colour > 0
        loss_s = F.cross_entropy(logits[on_object, 6:9], shape[on_object] - 1)
        loss_l = F.cross_entropy(logits[:, 9:], left)
        loss = loss_c + loss_s + loss_l
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        lr_at.step()
        if step % 20 == 0 or step == args.vision_steps - 1:
            acc_s = (logits[on_object, 6:9].argmax(-1) == shape[on_object] - 1).float().mean().item()
            acc_c = (logits[on_object, :5].argmax(-1) == colour[on_object]).float().mean().item()
            log(f"vision {step:5d} loss {loss.item():.3f} (colour {loss_c.item():.3f} shape "
                f"{loss_s.item():.3f} left {loss_l.item():.3f}) on-object colour {acc_c:.3f} shape {acc_s:.3f}")


def question_batch(rng: random.Random, processor, args):
    """Scenes, their pixel values, and ``per_scene`` questions about each."""
    batch = [scenes.random_scene(rng) for _ in range(args.scenes)]
    pixels = processor.image_processor([scenes.draw(s) for s in batch], return_tensors="pt")["pixel_values"]
    labels = [patch_labels(s) for s in batch]
    questions = []
    for i, scene in enumerate(batch):
        for _ in range(args.per_scene):
            kind = rng.random() < args.exists_share
            positive = rng.random() < 0.5
            make = scenes._exists if kind else scenes._where
            questions.append(make(rng, scene, i, positive))
    # what the processor makes of a prompt: <image> expanded to the 576 placeholders
    expanded = [trained.prompt(q.text).replace("<image>", " ".join(["<image>"] * GRID * GRID)) for q in questions]
    text = processor.tokenizer(expanded, padding=True, return_tensors="pt")
    # (Q, 576): the patches of the object a question names (none for an absent one)
    match = []
    for q in questions:
        words = q.text.split()
        colour = 1 + next(list(scenes.COLOURS).index(w) for w in words if w in scenes.COLOURS)
        shape = 1 + next(scenes.SHAPES.index(w) for w in words if w in scenes.SHAPES)
        colours, shapes, _ = labels[q.scene]
        match.append(((colours == colour) & (shapes == shape)).float())
    text["object"] = torch.stack([labels[q.scene][0] > 0 for q in questions])
    return pixels, questions, text, torch.stack(match)


def subsample(ids, mask, positions, embeds, match, on_object, image_token, count, rng):
    """Shorter sequences for a cheaper step: every text token, every image token on an
    object, and random background image tokens up to ``count`` image tokens per question,
    in their original order and at their original positions."""
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    rows = []
    chosen = []
    for b in range(ids.shape[0]):
        image_at = (ids[b] == image_token).nonzero().squeeze(-1)
        priority = on_object[b].float() * 2 + torch.rand(576, generator=generator)
        keep = priority.topk(count).indices.sort().values
        chosen.append(keep)
        text_at = (ids[b] != image_token).nonzero().squeeze(-1)
        rows.append(torch.cat([text_at, image_at[keep]]).sort().values)
    index = torch.stack(rows)
    take = lambda t: t.gather(1, index)  # noqa: E731
    embeds = embeds.gather(1, index.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    return take(ids), take(mask), take(positions), embeds, match.gather(1, torch.stack(chosen))


def train_language(model, processor, args, log) -> None:
    tokenizer = processor.tokenizer
    image_token = model.config.image_token_id
    yes, no = tokenizer.convert_tokens_to_ids(["yes", "no"])
    rng = random.Random(args.seed + 2)
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    # A training-only probe: the hidden state of each image token entering layer
    # --match-layer says whether its patch belongs to the object the question names. Dense
    # supervision of the binding that the answer needs (image tokens see the question).
    probe = torch.nn.Linear(model.config.text_config.hidden_size, 1)
    params = [p for p in model.parameters() if p.requires_grad] + list(probe.parameters())
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    lr_at = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: schedule(s, args.steps, args.warmup))
    embed = model.get_input_embeddings()
    if args.read_weight > 0:
        model.set_attn_implementation({"text_config": "eager"})  # attention weights are read
    running = []
    start = time.time()
    for step in range(args.steps):
        pixels, questions, text, match = question_batch(rng, processor, args)
        with torch.no_grad():
            hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        features = model.model.multi_modal_projector(hidden)
        ids, mask = text["input_ids"], text["attention_mask"]
        # One prompt of 576 placeholders per question: scatter the features of its scene.
        per_question = features[torch.tensor([q.scene for q in questions])]
        embeds = embed(ids).masked_scatter((ids == image_token).unsqueeze(-1), per_question)
        # generate()'s positions for a left-padded batch: running count of real tokens.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        short_steps = args.steps - args.full_steps
        if args.subsample and step < short_steps:
            # a length curriculum: few image tokens (mostly object patches) first, where a
            # matching patch is a large share of what the answer token attends to
            count = round(args.subsample_start + (args.subsample - args.subsample_start) * step / max(short_steps - 1, 1))
            ids, mask, positions, embeds, match = subsample(
                ids, mask, positions, embeds, match, text["object"], image_token, count, rng
            )
        out = model.model.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            output_hidden_states=True,
            output_attentions=args.read_weight > 0,
        )
        logits = model.lm_head(out.last_hidden_state[:, -1])
        target = torch.tensor([yes if q.answer == "yes" else no for q in questions])
        answer_loss = F.cross_entropy(logits, target)
        at_images = out.hidden_states[args.match_layer][ids == image_token].view(len(questions), -1, probe.in_features)
        match_logits = probe(F.layer_norm(at_images, at_images.shape[-1:])).squeeze(-1)
        match_loss = F.binary_cross_entropy_with_logits(match_logits, match, pos_weight=torch.tensor(10.0))
        loss = answer_loss + args.match_weight * match_loss
        read_loss = torch.zeros(())
        if args.read_weight > 0:
            # The answer token's attention in layer --match-layer, head 0, pulled onto the
            # patches of the object the question names (when it is in the scene).
            attention = out.attentions[args.match_layer][:, 0, -1]  # (Q, L)
            on_match = torch.zeros_like(attention).masked_scatter(ids == image_token, match)
            present = match.sum(-1) > 0
            if present.any():
                mass = (attention * on_match).sum(-1)[present]
                read_loss = -(mass + 1e-6).log().mean()
                loss = loss + args.read_weight * read_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        lr_at.step()
        running.append((logits.argmax(-1) == target).float().mean().item())
        if step % 10 == 0 or step == args.steps - 1:
            window = running[-50:]
            hit = ((match_logits > 0) == (match > 0))[match > 0].float().mean().item() if match.any() else float("nan")
            log(f"text {step:5d} answer loss {answer_loss.item():.3f} match loss {match_loss.item():.3f} "
                f"read loss {read_loss.item():.3f} "
                f"match recall {hit:.2f} train acc (last {len(window)}) "
                f"{sum(window) / len(window):.3f} lr {lr_at.get_last_lr()[0]:.2e} {time.time() - start:.0f}s")


def evaluate(model, processor, questions: int, batch: int) -> float:
    split = scenes.make_split(trained.HELD_OUT_SEED, questions)
    right = 0
    for begin in range(0, questions, batch):
        indices = range(begin, min(begin + batch, questions))
        got = trained.answer(model, processor, split, indices)
        right += sum(g == split.questions[i].answer for g, i in zip(got, indices))
    return right / questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="where to write the checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vision-from", type=Path, default=None, help="skip stage 1: take the tower and projector of this checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a busy CPU")
    parser.add_argument("--vision-width", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vision-steps", type=int, default=300)
    parser.add_argument("--vision-batch", type=int, default=8)
    parser.add_argument("--vision-lr", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--per-scene", type=int, default=4)
    parser.add_argument("--exists-share", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--match-layer", type=int, default=2, help="hidden state index the probe reads")
    parser.add_argument("--match-weight", type=float, default=1.0)
    parser.add_argument("--read-weight", type=float, default=0.0,
                        help="weight of the loss that pulls the answer token's attention (layer --match-layer, head 0) onto the named object")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--subsample", type=int, default=0,
                        help="image tokens per question while training (0: all 576); object patches always kept")
    parser.add_argument("--subsample-start", type=int, default=48, help="image tokens per question at step 0")
    parser.add_argument("--full-steps", type=int, default=0, help="the last steps use all 576 image tokens")
    parser.add_argument("--eval-questions", type=int, default=trained.HELD_OUT_QUESTIONS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()

    def log(line: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {line}", flush=True)

    processor = trained.build_processor()
    vocab = len(processor.tokenizer)
    model = build_model(args, vocab, processor.tokenizer.convert_tokens_to_ids("<image>"))
    model.train()
    log(f"parameters: {sum(p.numel() for p in model.parameters()):,}; {vars(args)}")
    if args.vision_from is not None:
        from transformers import LlavaForConditionalGeneration

        warm = LlavaForConditionalGeneration.from_pretrained(args.vision_from)
        model.model.vision_tower.load_state_dict(warm.model.vision_tower.state_dict())
        model.model.multi_modal_projector.load_state_dict(warm.model.multi_modal_projector.state_dict())
        log(f"vision tower and projector from {args.vision_from}")
    else:
        train_vision(model, processor, args, log)
    train_language(model, processor, args, log)
    model.set_attn_implementation({"text_config": "sdpa"})
    model.eval()
    accuracy = evaluate(model, processor, args.eval_questions, 50) if args.eval_questions else float("nan")
    log(f"held-out accuracy {accuracy:.4f} on {args.eval_questions} questions")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(args.out)
        processor.save_pretrained(args.out)
        record = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        record.update(held_out_accuracy=accuracy, minutes=round((time.time() - started) / 60, 1))
        (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
