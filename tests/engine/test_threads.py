"""A block prunes only the calls of the thread that entered it: another thread's calls
on the same model run the model as usual, also while the block's thread generates."""

from __future__ import annotations

import threading

import torch

import tokenprune

GREEDY = {"max_new_tokens": 3, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}


def _generate(model, inputs):
    with torch.no_grad():
        out = model.generate(**inputs, **GREEDY)
    return out.sequences, torch.stack(out.logits)


def _in_thread(fn, *args):
    result, errors = [], []

    def target():
        try:
            result.append(fn(*args))
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result, errors


def test_another_threads_call_inside_a_block_is_not_pruned(llava, batches):
    inputs = batches["llava"].inputs
    unpruned = _generate(llava, inputs)
    with tokenprune.prune(llava, "fastv", keep=0.1, layer=2) as run:
        thread, result, errors = _in_thread(_generate, llava, inputs)
        thread.join()
        assert run.prefills == 0 and run.selection is None
        pruned = _generate(llava, inputs)
        assert run.prefills == 1
    assert not errors, errors
    assert torch.equal(result[0][0], unpruned[0]) and torch.equal(result[0][1], unpruned[1])
    assert not torch.equal(pruned[1], unpruned[1])


def test_two_threads_at_once(llava, batches):
    inputs = batches["llava"].inputs
    unpruned = _generate(llava, inputs)
    with tokenprune.prune(llava, "fastv", keep=0.1, layer=2):
        alone = _generate(llava, inputs)
    for _ in range(3):
        with tokenprune.prune(llava, "fastv", keep=0.1, layer=2) as run:
            thread, result, errors = _in_thread(_generate, llava, inputs)
            mine = _generate(llava, inputs)
            thread.join()
        assert not errors, errors
        assert run.prefills == 1
        assert torch.equal(mine[0], alone[0]) and torch.equal(mine[1], alone[1])
        assert torch.equal(result[0][0], unpruned[0]) and torch.equal(result[0][1], unpruned[1])
