"""The committed shapes model (`tokenprune.trained`): its unpruned accuracy on held-out
questions through the processor and ``generate()``, and keep=1.0 pruning giving the very
same answers."""

from __future__ import annotations

import pytest
import torch

import tokenprune
from tokenprune import scenes, trained

#: A fixed subset of the held-out split (its first questions: half ``exists``, half
#: ``where``, answers balanced); the whole split is measured by benchmarks/accuracy.py.
QUESTIONS = 120


@pytest.fixture(scope="module")
def shapes():
    torch.manual_seed(0)
    model, processor = trained.load()
    split = scenes.make_split(trained.HELD_OUT_SEED, trained.HELD_OUT_QUESTIONS)
    return model, processor, split


def _answers(model, processor, split, batch: int = 40) -> list[str]:
    out: list[str] = []
    for begin in range(0, QUESTIONS, batch):
        out += trained.answer(model, processor, split, range(begin, begin + batch))
    return out


def test_the_committed_model_answers_at_least_90_percent_of_held_out_questions(shapes):
    model, processor, split = shapes
    got = _answers(model, processor, split)
    truth = [q.answer for q in split.questions[:QUESTIONS]]
    assert set(got) <= {"yes", "no"}
    accuracy = sum(g == t for g, t in zip(got, truth)) / QUESTIONS
    assert accuracy >= 0.9, f"held-out accuracy {accuracy:.3f} on {QUESTIONS} questions"
    for kind in ("exists", "where"):
        asked = [(g, t) for g, t, q in zip(got, truth, split.questions) if q.kind == kind]
        assert sum(g == t for g, t in asked) / len(asked) >= 0.85, kind


@pytest.mark.parametrize("recipe", ["fastv", "random"])
def test_keep_one_prunes_nothing_and_changes_no_answer(shapes, recipe, eager_selectors):
    model, processor, split = shapes
    inputs = trained.batch_inputs(processor, split, range(6))
    with torch.inference_mode():
        plain = model(**inputs).logits[:, -1]
        with tokenprune.prune(model, recipe, keep=1.0, layer=2, generator=torch.Generator().manual_seed(0)):
            pruned = model(**inputs).logits[:, -1]
            generated = model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert torch.equal(pruned, plain)
    assert processor.tokenizer.batch_decode(generated[:, -1:]) == trained.answer(model, processor, split, range(6))
