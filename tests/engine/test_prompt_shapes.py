"""Prompts of every shape: images first, in the middle or last (the prompt ends with
image tokens), several images, text-only rows, left and right padding. keep = 1.0 is
bitwise the unpatched model; at keep < 1 each row of a batch is its own single run and
the last prompt token (whose logits give the next token) always survives."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tiny_models import BOS_ID, IMAGE_TOKEN_ID, PAD_ID

import tokenprune

from .reference import masked_reference

LAYER = 2
TOKENS = 576  # per LLaVA-1.5 image


def _position_ids(mask):
    # What generate() passes: positions count real tokens only (padding takes none).
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def build(rows, side, pixels):
    """A padded LLaVA batch: each row a list of ("bos", 1), ("text", n) and ("image", i)
    (image i of ``pixels``) parts."""
    prompts, images = [], []
    for parts in rows:
        ids = []
        for kind, value in parts:
            if kind == "bos":
                ids.append(BOS_ID)
            elif kind == "text":
                ids += [(7 * len(ids) + 3 * i) % 100 + 3 for i in range(value)]
            else:
                ids += [IMAGE_TOKEN_ID] * TOKENS
                images.append(pixels[value])
        prompts.append(ids)
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(rows), length), PAD_ID)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, ids in enumerate(prompts):
        where = slice(length - len(ids), length) if side == "left" else slice(0, len(ids))
        input_ids[b, where] = torch.tensor(ids)
        mask[b, where] = 1
    inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": _position_ids(mask)}
    if images:
        inputs["pixel_values"] = torch.stack(images)
    return inputs, prompts


def single(inputs, prompts, b):
    """Row ``b`` of ``inputs`` alone, unpadded, with its own images."""
    ids = torch.tensor([prompts[b]])
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": _position_ids(torch.ones_like(ids))}
    before = sum(p.count(IMAGE_TOKEN_ID) for p in prompts[:b]) // TOKENS
    count = prompts[b].count(IMAGE_TOKEN_ID) // TOKENS
    if count:
        out["pixel_values"] = inputs["pixel_values"][before : before + count]
    return out


@st.composite
def prompt_rows(draw):
    """1-2 rows: text only, or 1-2 images placed first (before any text), in the middle,
    or last (the prompt ends with image tokens)."""
    rows, image = [], 0
    for _ in range(draw(st.integers(1, 2))):
        images = draw(st.integers(0, 2))
        where = draw(st.sampled_from(["first", "middle", "last"]))
        text = st.integers(1, 3)
        parts = [] if images and where == "first" else [("bos", 1), ("text", draw(text))]
        for i in range(images):
            parts.append(("image", image))
            image += 1
            if i < images - 1 or where != "last":
                parts.append(("text", draw(text)))
        rows.append(parts)
    return rows


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(8, 3, 336, 336, generator=torch.Generator().manual_seed(0))


def _last_real(mask):
    return mask.shape[1] - 1 - mask.flip(1).long().argmax(1)


@pytest.mark.parametrize("side", ["left", "right"])
@settings(max_examples=3)
@given(rows=prompt_rows(), recipe=st.sampled_from(["fastv", "adaptprune"]))
# rows of different lengths, so the padding side matters: two images ending the prompt
# beside one image mid-prompt, and an image row beside a text-only row
@example(
    rows=[[("bos", 1), ("text", 2), ("image", 0), ("text", 1), ("image", 1)], [("bos", 1), ("text", 3), ("image", 2), ("text", 1)]],
    recipe="adaptprune",
)
@example(rows=[[("image", 0), ("text", 2)], [("bos", 1), ("text", 3)]], recipe="fastv")
def test_every_prompt_shape(llava, pixels, rows, side, recipe):
    inputs, prompts = build(rows, side, pixels)
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        unpruned = llava(**inputs).logits
        with tokenprune.prune(llava, recipe, keep=1.0, layer=LAYER):
            same = llava(**inputs).logits
        assert torch.equal(same[mask], unpruned[mask])

        with tokenprune.prune(llava, recipe, keep=0.25, layer=LAYER) as run:
            pruned = llava(**inputs).logits  # (B, L', V) along run.kept
            kept = run.kept
            singles = []
            for b in range(len(rows)):
                logits = llava(**single(inputs, prompts, b)).logits
                singles.append((logits, run.kept))
    if kept is None:  # no row has an image: nothing was pruned
        assert torch.equal(pruned, unpruned)
        return
    last = _last_real(mask)
    offset = (~mask).long().cumsum(1).gather(1, last.unsqueeze(1)).squeeze(1)  # padding before the row's tokens
    for b, (logits, single_kept) in enumerate(singles):
        slots = kept[b] >= 0
        assert int(last[b]) in kept[b].tolist(), "the last prompt token was pruned"
        if single_kept is None:  # a text-only row: nothing pruned
            assert torch.equal(kept[b][slots], torch.nonzero(mask[b]).flatten())
            torch.testing.assert_close(pruned[b][slots], logits[0], atol=1e-5, rtol=0)
            continue
        shift = int(offset[b]) if side == "left" else 0
        assert torch.equal(kept[b][slots] - shift, single_kept[0][single_kept[0] >= 0])
        torch.testing.assert_close(pruned[b][slots], logits[0][single_kept[0] >= 0], atol=1e-5, rtol=0)


def test_a_prompt_ending_with_image_tokens_keeps_its_last_token(llava, pixels):
    # [bos, t, t, t, <image> x 576]: the next token comes from the last image token.
    ids = torch.tensor([[BOS_ID, 5, 6, 7] + [IMAGE_TOKEN_ID] * TOKENS])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels[:1]}
    last = ids.shape[1] - 1
    options = {"max_new_tokens": 2, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    with tokenprune.prune(llava, "fastv", keep=0.1, layer=LAYER) as run, torch.no_grad():
        logits = llava(**inputs).logits
        kept = run.kept[0]
        out = llava.generate(**inputs, **options)
    assert int(kept[-1]) == last
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[0, kept] = True
    with masked_reference(llava, LAYER, keep), torch.no_grad():
        reference = llava(**inputs).logits
        expected = llava.generate(**inputs, **options)
    torch.testing.assert_close(logits[0, -1], reference[0, -1], atol=1e-5, rtol=0)
    assert torch.equal(out.sequences, expected.sequences)
    assert int(out.sequences[0, ids.shape[1]]) == int(logits[0, -1].argmax())
