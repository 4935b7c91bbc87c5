"""Train the committed shapes model (`tokenprune.trained`) from scratch, seeded.

    nice -n 19 taskset -c 0 python training/train_shapes.py --vision-steps 120 --vision-lr 3e-3 \
        --width 64 --layers 4 --pool 1000 --steps 1750 --hold 1400 --full-steps 50 --lr 2e-3 \
        --out tokenprune/models/shapes-llava

Two stages (`tokenprune.scenes` scenes from seeds apart from the held-out split's):

1. **Vision warm start.** The CLIP-style tower and LLaVA's projector learn per-patch labels
   through linear probes on the (normalised) projector output: the colour and the shape of
   the object under each patch centre, and whether the patch is in the left half. Every
   image gives 576 labels, so this converges in about a hundred steps (fresh scenes each).
2. **Question answering.** The tower is frozen and its features for a pool of ``--pool``
   training scenes are cached; the projector and the Llama text model learn the next token
   (``yes`` / ``no``) after ``<s> USER: question <image> ASSISTANT:`` for random questions
   about pool scenes. The question comes before the image so that image tokens can read
   it. Two training-only probes supervise the binding densely, on every image token:

   - *evidence* (hidden state entering layer ``--match-layer``): is this patch evidence for
     "yes", i.e. the named colour and shape and, for a where-question, on the named side?
     The answer is then an OR over the image tokens, for both kinds of question;
   - *side* (entering layer ``--side-layer``, where-questions only): is this patch on the
     side the question names?

   Without them the answer stayed at chance for thousands of steps (even on exact
   per-patch symbols); with the evidence probe alone, exists-questions learned and
   where-questions stayed at chance; with both, both learn within a few hundred steps.
   A length curriculum keeps training cheap: every object patch plus random background
   patches up to ``--count-start`` image tokens (at their original positions) for the
   first ``--hold`` steps, then growing to all 576 for the last ``--full-steps``.

Finally it measures accuracy on the held-out split through the processor and
``generate()`` (the path every user takes) and writes the checkpoint, tokenizer and
processor files and ``training.json`` (arguments, accuracy, minutes) to ``--out``.
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
from tokenprune.model_configs import (
    IMAGE_SIZE,
    PATCH_SIZE,
    clip_vision_config,
    llava_config,
    text_config,
)

GRID, PATCH = IMAGE_SIZE // PATCH_SIZE, PATCH_SIZE  # 24 x 24 patches of 14 px


def build_model(args: argparse.Namespace, vocab: int, image_token: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlavaForConditionalGeneration

    # vision layer -2: the last layer is never used, as in LLaVA-1.5
    vision = clip_vision_config(hidden_size=args.vision_width, layers=args.vision_layers + 1, heads=4)
    text = text_config(
        vocab_size=vocab,
        hidden_size=args.width,
        intermediate_size=args.width * 2,
        layers=args.layers,
        heads=4,
        kv_heads=4,
        max_positions=1024,
        tie_word_embeddings=False,
    )
    config = llava_config(vision, LlamaConfig(**text), image_token)
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


def evidence(question: scenes.Question, colour: Tensor, shape: Tensor, left: Tensor) -> Tensor:
    """``(576,)`` 1.0 where a patch is evidence for "yes": it shows the named colour and
    shape and, for a where-question, lies on the named side. The answer is "yes" exactly
    when some patch is evidence (up to patch-centre sampling), for both kinds alike."""
    words = question.text.split()
    want_colour = 1 + next(list(scenes.COLOURS).index(w) for w in words if w in scenes.COLOURS)
    want_shape = 1 + next(scenes.SHAPES.index(w) for w in words if w in scenes.SHAPES)
    flag = (colour == want_colour) & (shape == want_shape)
    if "left" in words:
        flag &= left == 1
    elif "right" in words:
        flag &= left == 0
    return flag.float()


def cache_scenes(model, processor, args, log) -> tuple[list[scenes.Scene], Tensor, tuple[Tensor, ...]]:
    """A fixed pool of ``--pool`` training scenes: the frozen tower's layer -2 patch states
    ``(P, 576, vision width)`` and the per-patch labels ``(P, 576)`` each."""
    rng = random.Random(args.seed + 2)
    pool = [scenes.random_scene(rng) for _ in range(args.pool)]
    states = []
    with torch.no_grad():
        for begin in range(0, len(pool), 32):
            chunk = pool[begin : begin + 32]
            pixels = processor.image_processor([scenes.draw(s) for s in chunk], return_tensors="pt")["pixel_values"]
            states.append(model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:])
    labels = tuple(torch.stack(x) for x in zip(*(patch_labels(s) for s in pool)))
    log(f"cached the tower's features of {len(pool)} training scenes")
    return pool, torch.cat(states), labels


def question_batch(rng: random.Random, tokenizer, pool, labels, count: int, args):
    """``--batch`` questions about random pool scenes as left-padded prompts with ``count``
    image tokens each (every object patch, then random background patches; all 576 when
    ``count >= 576``), at the positions the full prompt gives them.

    Returns the scene index ``(Q,)``, token ids, attention mask and positions ``(Q, L)``,
    the chosen patch of each image slot ``(Q, L)`` (-1 elsewhere), evidence per slot
    ``(Q, L)``, the answers ``(Q,)`` (1 = yes), which are where-questions ``(Q,)`` and
    whether each slot's patch lies on the side a where-question names ``(Q, L)``."""
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    end = tokenizer.convert_tokens_to_ids("ASSISTANT:")
    colour, shape, left = labels
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    rows = []
    for _ in range(args.batch):
        index = rng.randrange(len(pool))
        make = scenes._exists if rng.random() < args.exists_share else scenes._where
        question = make(rng, pool[index], index, rng.random() < 0.5)
        head = tokenizer(trained.prompt(question.text).split(" <image>")[0]).input_ids
        if count >= GRID * GRID:
            patches = torch.arange(GRID * GRID)
        else:
            priority = (colour[index] > 0).float() * 2 + torch.rand(GRID * GRID, generator=generator)
            patches = priority.topk(count).indices.sort().values
        flags = evidence(question, colour[index], shape[index], left[index])[patches]
        # where-questions: does this patch lie on the side the question names?
        agrees = (left[index][patches] == int("left" in question.text)).float()
        ids = torch.tensor([*head, *[image_token] * len(patches), end])
        positions = torch.cat([torch.arange(len(head)), len(head) + patches, torch.tensor([len(head) + GRID * GRID])])
        slot = torch.cat([torch.full((len(head),), -1), patches, torch.tensor([-1])])
        flag = torch.cat([torch.zeros(len(head)), flags, torch.zeros(1)])
        agree = torch.cat([torch.zeros(len(head)), agrees, torch.zeros(1)])
        rows.append((index, ids, positions, slot, flag, int(question.answer == "yes"), question.kind == "where", agree))
    length = max(len(r[1]) for r in rows)

    def pad(t: Tensor, value) -> Tensor:  # left padding, as the processor does
        return torch.cat([torch.full((length - len(t),), value, dtype=t.dtype), t])

    return (
        torch.tensor([r[0] for r in rows]),
        torch.stack([pad(r[1], tokenizer.pad_token_id) for r in rows]),
        torch.stack([pad(torch.ones(len(r[1]), dtype=torch.long), 0) for r in rows]),
        torch.stack([pad(r[2], 0) for r in rows]),
        torch.stack([pad(r[3], -1) for r in rows]),
        torch.stack([pad(r[4], 0.0) for r in rows]),
        torch.tensor([r[5] for r in rows]),
        torch.tensor([r[6] for r in rows]),
        torch.stack([pad(r[7], 0.0) for r in rows]),
    )


def image_count(step: int, args) -> int:
    """The length curriculum: image tokens per question at ``step``: ``--count-start`` for
    the first ``--hold`` steps (the answer token learns to read the evidence while it is a
    large share of what it attends to: at 150+ tokens from the start, the answer stayed at
    chance though the evidence probe had learned), then growing linearly to 576 by the
    last ``--full-steps``."""
    ramp = args.steps - args.full_steps
    if step >= ramp:
        return GRID * GRID
    if step < args.hold:
        return args.count_start
    return round(args.count_start + (GRID * GRID - args.count_start) * (step - args.hold) / max(ramp - args.hold, 1))


def train_language(model, processor, args, log) -> None:
    tokenizer = processor.tokenizer
    yes, no = tokenizer.convert_tokens_to_ids(["yes", "no"])
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    pool, states, labels = cache_scenes(model, processor, args, log)
    rng = random.Random(args.seed + 3)
    # the probes' initial weights: the same whether stage 1 ran here or came from --vision-from
    torch.manual_seed(args.seed + 3)
    # A training-only probe: the hidden state of each image token entering layer
    # --match-layer says whether its patch is evidence for "yes" (the named object, on the
    # named side for a where-question). Without it the answer stayed at chance for
    # thousands of steps; with it, the answer follows within a few hundred.
    probe = torch.nn.Linear(model.config.text_config.hidden_size, 1)
    # and one on the image tokens entering layer --side-layer of a where-question: is this
    # patch on the side the question names? (the evidence probe alone learned the named
    # object but not the side: where-questions stayed at chance while exists reached 98%)
    side_probe = torch.nn.Linear(model.config.text_config.hidden_size, 1)
    params = [p for p in model.parameters() if p.requires_grad] + list(probe.parameters()) + list(side_probe.parameters())
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    lr_at = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: schedule(s, args.steps, args.warmup))
    embed = model.get_input_embeddings()
    running = []
    start = time.time()
    for step in range(args.steps):
        count = image_count(step, args)
        scene, ids, mask, positions, slot, flag, answer, where, agree = question_batch(rng, tokenizer, pool, labels, count, args)
        is_image = slot >= 0
        features = model.model.multi_modal_projector(states[scene[:, None].expand_as(slot)[is_image], slot[is_image]])
        embeds = embed(ids).masked_scatter(is_image.unsqueeze(-1), features)
        out = model.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, output_hidden_states=True
        )
        logits = model.lm_head(out.last_hidden_state[:, -1])
        target = torch.where(answer == 1, yes, no)
        answer_loss = F.cross_entropy(logits, target)
        at_images = out.hidden_states[args.match_layer][is_image]
        match_logits = probe(F.layer_norm(at_images, at_images.shape[-1:])).squeeze(-1)
        match = flag[is_image]
        match_loss = F.binary_cross_entropy_with_logits(match_logits, match, pos_weight=torch.tensor(5.0))
        side_states = out.hidden_states[args.side_layer][is_image & where[:, None]]
        side_logits = side_probe(F.layer_norm(side_states, side_states.shape[-1:])).squeeze(-1)
        side_loss = F.binary_cross_entropy_with_logits(side_logits, agree[is_image & where[:, None]])
        loss = answer_loss + args.match_weight * (match_loss + side_loss)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        lr_at.step()
        right = logits.argmax(-1) == target
        running.append((right[~where].float().mean().item(), right[where].float().mean().item()))
        if step % 20 == 0 or step == args.steps - 1:
            window = running[-50:]
            exists_acc, where_acc = (sum(x) / len(window) for x in zip(*window))
            hit = (match_logits > 0)[match > 0].float().mean().item() if match.any() else float("nan")
            false = (match_logits > 0)[match == 0].float().mean().item()
            log(f"text {step:5d} tokens {count:3d} answer loss {answer_loss.item():.3f} match loss "
                f"{match_loss.item():.3f} recall {hit:.2f} false {false:.4f} side loss {side_loss.item():.3f} train acc (last "
                f"{len(window)}) exists {exists_acc:.3f} where {where_acc:.3f} lr {lr_at.get_last_lr()[0]:.2e} "
                f"{time.time() - start:.0f}s")


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
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vision-steps", type=int, default=120)
    parser.add_argument("--vision-batch", type=int, default=8)
    parser.add_argument("--vision-lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=1750)
    parser.add_argument("--pool", type=int, default=1000, help="training scenes whose tower features are cached")
    parser.add_argument("--batch", type=int, default=32, help="questions per step")
    parser.add_argument("--exists-share", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--match-layer", type=int, default=2, help="hidden state index the probe reads")
    parser.add_argument("--side-layer", type=int, default=1, help="hidden state index the side probe reads")
    parser.add_argument("--match-weight", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--count-start", type=int, default=40, help="image tokens per question at step 0 (object patches always kept)")
    parser.add_argument("--hold", type=int, default=1400, help="steps at --count-start image tokens before the ramp")
    parser.add_argument("--full-steps", type=int, default=50, help="the last steps see all 576 image tokens")
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
