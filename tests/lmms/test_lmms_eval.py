"""End to end through the real lmms-eval CLI (``nox -s eval``; not in the default session):
``--model tokenprune`` on the shapes checkpoint and the ``shapes_pope`` task scores what
``benchmarks/accuracy.py`` measures for the same recipe, keep and questions, and logs
kept tokens and prefill time per sample. Also the registered classes' refusals and their
multi-round path, which need lmms-eval installed.

TOKENPRUNE_EVAL_CHECKPOINT (default: the committed shapes model) and
TOKENPRUNE_EVAL_QUESTIONS (default 96) change what is run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_modules import script_module

from tokenprune import scenes, trained
from tokenprune.lmms import shapes_pope

pytestmark = pytest.mark.lmms_eval

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = Path(os.environ.get("TOKENPRUNE_EVAL_CHECKPOINT", trained.MODEL_DIR))
QUESTIONS = int(os.environ.get("TOKENPRUNE_EVAL_QUESTIONS", "96"))
BATCH, RECIPE, KEEP, LAYER = 8, "adaptprune", 0.1, 2


def _benchmark() -> tuple[float, list[str]]:
    """benchmarks/accuracy.py's accuracy for RECIPE / KEEP / LAYER, and its answers (its
    own ``_run`` over the same batches, decoded as lmms-eval's base class decodes)."""
    with script_module(ROOT / "benchmarks" / "accuracy.py", "accuracy_benchmark") as module:
        args = argparse.Namespace(
            model=CHECKPOINT, questions=QUESTIONS, batch=BATCH, recipes=[RECIPE], keeps=[KEEP], layers=[LAYER]
        )
        accuracy = module.measure(args)[(RECIPE, KEEP, LAYER)].accuracy
        model, processor = trained.load(CHECKPOINT)
        split = scenes.make_split(trained.HELD_OUT_SEED, QUESTIONS)
        answers = []
        for start in range(0, QUESTIONS, BATCH):
            inputs = trained.batch_inputs(processor, split, range(start, min(start + BATCH, QUESTIONS)))
            ids, _, _ = module._run(model, inputs, RECIPE, KEEP, LAYER)
            answers += [processor.tokenizer.decode([i], skip_special_tokens=True) for i in ids]
    return accuracy, answers


def _lmms_eval(tmp_path: Path, mode: str) -> tuple[dict, list[dict]]:
    task = shapes_pope.write(tmp_path / "task", QUESTIONS).parent
    out = tmp_path / "out"
    model_args = (
        f"base=llava_hf,pretrained={CHECKPOINT},device_map=cpu,dtype=float32,"
        f"recipe={RECIPE},keep={KEEP},layer={LAYER}"
    )
    command = [
        sys.executable, "-m", "lmms_eval", "--model", "tokenprune", "--model_args", model_args,
        "--include_path", str(task), "--tasks", shapes_pope.TASK, "--batch_size", str(BATCH),
        "--device", "cpu", "--output_path", str(out), "--log_samples",
        *(["--force_simple"] if mode == "simple" else []),
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    tail = (run.stdout + run.stderr)[-4000:]
    # lmms-eval exits 0 after an evaluation error: the results file is the proof
    results = sorted(out.glob("*/*_results.json"))
    assert run.returncode == 0 and results, tail
    samples = sorted(out.glob("*/*_samples_shapes_pope.jsonl"))
    assert samples, tail
    return json.loads(results[-1].read_text()), [json.loads(line) for line in samples[-1].read_text().splitlines()]


@pytest.fixture(scope="module")
def benchmark() -> tuple[float, list[str]]:
    if not (CHECKPOINT / "config.json").is_file():
        pytest.fail(f"checkpoint: expected a shapes model folder, got {str(CHECKPOINT)!r} (set TOKENPRUNE_EVAL_CHECKPOINT)")
    torch.set_num_threads(1)
    return _benchmark()


# chat: lmms-eval's default (chat messages, the processor's chat template); simple:
# --force_simple (a text prompt, the tokenizer's chat template)
@pytest.mark.parametrize("mode", ["chat", "simple"])
def test_lmms_eval_scores_what_the_accuracy_benchmark_measures(tmp_path, benchmark, mode):
    results, samples = _lmms_eval(tmp_path, mode)
    expected, answers = benchmark
    score = results["results"][shapes_pope.TASK]["accuracy,none"]
    print(f"lmms-eval ({mode}) accuracy {score:.4f}, benchmarks/accuracy.py {expected:.4f}, {QUESTIONS} questions")
    assert score == pytest.approx(expected, abs=1e-12)
    samples.sort(key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(QUESTIONS))
    assert [s["filtered_resps"].strip() for s in samples] == [a.strip() for a in answers]
    kept = int(576 * KEEP)
    for sample in samples:
        (counts,) = sample["token_counts"]
        assert counts["visual_tokens"] == 576 and counts["kept_visual_tokens"] == kept
        assert counts["prefill_seconds"] > 0 and counts["output_tokens"] == 1
    throughput = results["throughput"]
    assert throughput["avg_kept_visual_tokens"] == kept and throughput["avg_visual_tokens"] == 576
    assert throughput["avg_prefill_seconds"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"keep": 1.5}, "keep: expected a fraction in (0, 1]"),
        ({"base": "llava_onevision"}, "base: expected one of internvl_hf, llava_hf, qwen2_5_vl, got 'llava_onevision'"),
        ({"batch_size": "auto"}, "batch_size: expected a whole number >= 1 (auto sizes are not supported), got 'auto'"),
    ],
)
def test_the_registered_model_refuses_bad_arguments_before_loading(args, message):
    from lmms_eval.models import get_model

    from tokenprune.errors import SpecError

    cls = get_model("tokenprune")
    assert cls.__name__ == "TokenPruneChat" and get_model("tokenprune", force_simple=True).__name__ == "TokenPruneSimple"
    good = {"base": "llava_hf", "pretrained": "/no/such/checkpoint", "recipe": "fastv", "keep": 0.1}
    with pytest.raises(SpecError, match=re.escape(message)):
        cls(**{**good, **args})


class _MultiRoundBase:
    """A stand-in for an lmms-eval class whose multi-round loop calls ``generate`` once per
    round, feeding each answer back into the next prompt."""

    def __init__(self, model):
        self.model, self._rank = model, 0

    def generate_until_multi_round(self, requests):
        answers = []
        for inputs in requests:
            ids = inputs["input_ids"]
            for _ in range(2):
                out = self.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs["pixel_values"],
                    max_new_tokens=2, do_sample=False, pad_token_id=0,
                )
                ids = out
            answers.append(ids)
        return answers


def test_multi_round_calls_are_pruned_one_by_one():
    import tokenprune
    from tests.tiny_models import make_batch, tiny_model
    from tokenprune.lmms.model import TokenPruneSimple

    model = tiny_model("llava").eval()
    requests = [make_batch(model, [[(336, 336)]], seed=i, text_len=2 + i).inputs for i in range(2)]
    wrapper = TokenPruneSimple.__new__(TokenPruneSimple)
    wrapper._base = _MultiRoundBase(model)
    wrapper._block = tokenprune.prune(model, "fastv", keep=0.25, layer=1)
    got = wrapper.generate_until_multi_round(requests)
    assert "generate" not in vars(model)
    with torch.inference_mode():
        for inputs, out in zip(requests, got):
            ids = inputs["input_ids"]
            for _ in range(2):
                with tokenprune.prune(model, "fastv", keep=0.25, layer=1):
                    ids = model.generate(input_ids=ids, pixel_values=inputs["pixel_values"], max_new_tokens=2, do_sample=False, pad_token_id=0)
            assert out.tolist() == ids.tolist()
