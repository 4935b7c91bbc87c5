"""An lmms-eval task over the held-out shapes split (`tokenprune.scenes`, seed
`tokenprune.trained.HELD_OUT_SEED`): the questions `benchmarks/accuracy.py` asks, as local
files.

    python -m tokenprune.lmms.shapes_pope DIR --questions 1200
    lmms-eval --include_path DIR --tasks shapes_pope --model tokenprune ...

`write` puts into ``DIR``: ``images/`` (one PNG per scene), ``test.jsonl`` (one question
per line: ``question_id``, ``question``, ``answer``, ``kind``, ``negative``, ``image``) and
``shapes_pope.yaml``, the task: the json files load with `datasets` offline, and its
functions are the ones below (imported by lmms-eval through ``!function``). The score is
the share of answers equal to the expected ``yes`` / ``no`` (``accuracy``), as in the
benchmark; the model answers with one token.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tokenprune import scenes

__all__ = ["TASK", "doc_to_text", "doc_to_visual", "process_results", "write"]

TASK = "shapes_pope"
YAML = """\
# Written by tokenprune.lmms.shapes_pope: the held-out shapes split, seed {seed}, {questions} questions.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function tokenprune.lmms.shapes_pope.doc_to_visual
doc_to_text: !function tokenprune.lmms.shapes_pope.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 1
  temperature: 0
  do_sample: false
  num_beams: 1
process_results: !function tokenprune.lmms.shapes_pope.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write(folder: str | Path, questions: int, seed: int | None = None) -> Path:
    """Write the task for the first ``questions`` questions of
    ``scenes.make_split(seed, questions)`` (default seed: the held-out one) into
    ``folder``; returns the task's YAML path."""
    from tokenprune import trained

    seed = trained.HELD_OUT_SEED if seed is None else seed
    if isinstance(questions, bool) or not isinstance(questions, int) or questions < 1:
        raise ValueError(f"questions: expected an int >= 1, got {questions!r}")
    folder = Path(folder).resolve()
    (folder / "images").mkdir(parents=True, exist_ok=True)
    split = scenes.make_split(seed, questions)
    drawn: set[int] = set()
    lines = []
    for i, question in enumerate(split.questions):
        image = folder / "images" / f"{question.scene:05d}.png"
        if question.scene not in drawn:
            scenes.draw(split.scenes[question.scene]).save(image)
            drawn.add(question.scene)
        record = {
            "question_id": i,
            "question": question.text,
            "answer": question.answer,
            "kind": question.kind,
            "negative": question.negative,
            "image": str(image),
        }
        lines.append(json.dumps(record))
    data = folder / "test.jsonl"
    data.write_text("\n".join(lines) + "\n")
    path = folder / f"{TASK}.yaml"
    path.write_text(YAML.format(task=TASK, data=json.dumps(str(data)), seed=seed, questions=questions))
    return path


def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    """The scene picture (RGB, 336 x 336)."""
    from PIL import Image

    with Image.open(doc["image"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """The question as the shapes model reads it (its chat template puts it before the
    image)."""
    return doc["question"]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """1.0 when the answer is the expected word."""
    return {"accuracy": float(results[0].strip().lower() == doc["answer"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the shapes_pope lmms-eval task into a folder.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--questions", type=int, default=None, help="default: the whole held-out split")
    parser.add_argument("--seed", type=int, default=None, help="default: the held-out seed")
    args = parser.parse_args(argv)
    from tokenprune import trained

    path = write(args.folder, args.questions or trained.HELD_OUT_QUESTIONS, args.seed)
    print(path)


if __name__ == "__main__":
    main()
