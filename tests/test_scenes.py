"""Synthetic scenes and questions: seeded, balanced, unambiguous, a few patches per object."""

from __future__ import annotations

import numpy as np

from tokenprune import scenes


def test_same_seed_same_split_other_seed_other_split():
    a, b = scenes.make_split(7, 40), scenes.make_split(7, 40)
    assert a == b
    assert np.array_equal(np.asarray(scenes.draw(a.scenes[0])), np.asarray(scenes.draw(b.scenes[0])))
    assert scenes.make_split(8, 40) != a


def test_answers_are_balanced_per_kind_and_true_to_the_scene():
    split = scenes.make_split(3, 400)
    for kind in ("exists", "where"):
        answers = [q.answer for q in split.questions if q.kind == kind]
        assert answers.count("yes") == answers.count("no") == 100
    negatives = [q.negative for q in split.questions if q.kind == "exists" and q.answer == "no"]
    assert 30 <= negatives.count("adversarial") <= 70
    for q in split.questions:
        scene = split.scenes[q.scene]
        words = q.text.split()
        colour = next(w for w in words if w in scenes.COLOURS)
        shape = next(w for w in words if w in scenes.SHAPES)
        if q.kind == "exists":
            assert scene.has(colour, shape) == (q.answer == "yes")
            if q.negative == "adversarial":
                assert any(o.colour == colour or o.shape == shape for o in scene.objects)
        else:
            (obj,) = [o for o in scene.objects if o.colour == colour and o.shape == shape]
            assert (obj.side == words[-2]) == (q.answer == "yes")


def test_objects_are_apart_clear_of_the_middle_and_cover_a_few_patches():
    split = scenes.make_split(5, 200)
    for scene in split.scenes:
        pairs = {(o.colour, o.shape) for o in scene.objects}
        assert len(pairs) == len(scene.objects)
        # (24, 14, 24, 14): the pixels of each 14 px patch
        patches = np.asarray(scenes.object_map(scene)).reshape(24, 14, 24, 14)
        for i, o in enumerate(scene.objects):
            assert abs(o.x - 168) >= 24
            touched = (patches == i + 1).any(axis=(1, 3)).sum()
            assert 2 <= touched <= 16
        drawn = np.asarray(scenes.draw(scene))
        assert drawn.shape == (336, 336, 3)
