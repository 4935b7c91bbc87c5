"""What pruning keeps: accuracy and prefill time of every recipe on the trained shapes model.

A shapes model (`tokenprune.trained`, a LLaVA-1.5-shaped VLM trained on synthetic shape
scenes by ``training/train_shapes.py``) answers the held-out yes/no questions (`tokenprune.scenes`, seed
`trained.HELD_OUT_SEED`) unpruned and with every recipe at each keep and pruning layer,
through the processor and ``generate()`` in left-padded batches. Each batch runs every
configuration in turn, so machine load drifts hit all of them alike; the prefill time is
the wall time of ``generate`` of one token, per question.

    python benchmarks/accuracy.py --model PATH --out results/
    python benchmarks/accuracy.py --model PATH --questions 100 --recipes fastv,random --keeps 0.1

Writes ``accuracy.md`` (the table) and ``accuracy-layer-{layer}.png`` (a plot per layer) into ``--out`` and
prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tokenprune
from tokenprune import scenes, trained
from tokenprune.errors import CueError

KEEPS = (0.5, 0.25, 0.1, 0.05)


@dataclass
class Tally:
    """Answers of one configuration: right per kind, same as unpruned, seconds."""

    right: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    asked: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    same: int = 0
    seconds: float = 0.0
    kept: int = 0

    @property
    def accuracy(self) -> float:
        return sum(self.right.values()) / max(sum(self.asked.values()), 1)


def _run(model, inputs, recipe: str | None, keep: float, layer) -> tuple[list[int], float, int]:
    """Answer token ids, seconds of the prefill, visual tokens kept per sample (mean)."""
    with torch.inference_mode():
        if recipe is None:
            start = time.perf_counter()
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False)
            return out[:, -1].tolist(), time.perf_counter() - start, 576
        generator = torch.Generator().manual_seed(0)
        with tokenprune.prune(model, recipe, keep=keep, layer=layer, generator=generator) as run:
            start = time.perf_counter()
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False)
            seconds = time.perf_counter() - start
        counts = [len(sample.kept_positions) for sample in run.selections]
        return out[:, -1].tolist(), seconds, round(sum(counts) / max(len(counts), 1))


def measure(args: argparse.Namespace) -> dict[tuple, Tally]:
    from tqdm import tqdm

    model, processor = trained.load(args.model)
    split = scenes.make_split(trained.HELD_OUT_SEED, args.questions)
    answers = processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
    words = dict(zip(answers, ["yes", "no"]))
    configs: list[tuple] = [("unpruned", 1.0, "-")]
    for layer in args.layers:
        for recipe in args.recipes:
            configs += [(recipe, keep, layer) for keep in args.keeps]
    batches = [range(b, min(b + args.batch, args.questions)) for b in range(0, args.questions, args.batch)]
    # warm-up: compile the selectors before anything is timed; a recipe whose cues this
    # point cannot give (attention at layer="input") is left out and shown as n/a
    warm = trained.batch_inputs(processor, split, batches[0])
    for config in list(configs[1:]):
        try:
            _run(model, warm, *config)
        except CueError:
            configs.remove(config)
    tallies = {c: Tally() for c in configs}
    with tqdm(total=len(batches) * len(configs), desc="accuracy", unit="run") as bar:
        for indices in batches:
            inputs = trained.batch_inputs(processor, split, indices)
            reference = None
            for config in configs:
                recipe, keep, layer = config
                ids, seconds, kept = _run(model, inputs, None if recipe == "unpruned" else recipe, keep, layer)
                reference = reference or ids
                tally = tallies[config]
                tally.seconds += seconds
                tally.kept = kept
                for i, got in zip(indices, ids):
                    question = split.questions[i]
                    tally.asked[question.kind] += 1
                    tally.right[question.kind] += words.get(got) == question.answer
                tally.same += sum(a == b for a, b in zip(ids, reference))
                bar.update()
    return tallies


def table(tallies: dict[tuple, Tally], args: argparse.Namespace) -> str:
    n = args.questions
    unpruned = tallies[("unpruned", 1.0, "-")]
    lines = [
        f"Accuracy (%) on {n} held-out questions (half `exists`, half `where`; chance 50), "
        f"unpruned: **{100 * unpruned.accuracy:.1f}** (exists "
        f"{100 * unpruned.right['exists'] / max(unpruned.asked['exists'], 1):.1f}, where "
        f"{100 * unpruned.right['where'] / max(unpruned.asked['where'], 1):.1f}); prefill "
        f"{1000 * unpruned.seconds / n:.1f} ms per question.",
        "",
    ]
    for layer in args.layers:
        head = " | ".join(f"keep {k}" for k in args.keeps)
        lines += [f"Layer {layer}: accuracy % (answers same as unpruned %, prefill ms per question)", ""]
        lines += [f"| recipe | {head} |", "| --- |" + " --- |" * len(args.keeps)]
        for recipe in args.recipes:
            cells = []
            for keep in args.keeps:
                t = tallies.get((recipe, keep, layer))
                if t is None:
                    cells.append("n/a")
                    continue
                cells.append(f"{100 * t.accuracy:.1f} ({100 * t.same / n:.0f}, {1000 * t.seconds / n:.1f})")
            lines.append(f"| `{recipe}` | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(tallies: dict[tuple, Tally], args: argparse.Namespace, layer, path: Path) -> None:
    """Accuracy against keep (log axis), one line per recipe that runs at ``layer``."""
    import math

    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 900, 560, 70, 200, 40, 60
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    keeps = sorted({*args.keeps, 1.0})
    lo, hi = math.log(min(keeps)), math.log(max(keeps))
    values = [t.accuracy for (_, _, at), t in tallies.items() if at in (layer, "-")]
    floor = min(0.4, math.floor(10 * min(values)) / 10)

    def xy(keep: float, accuracy: float) -> tuple[float, float]:
        x = left + (math.log(keep) - lo) / (hi - lo) * (width - left - right)
        y = top + (1 - (accuracy - floor) / (1 - floor)) * (height - top - bottom)
        return x, y

    for a in [floor + i / 10 for i in range(round(10 * (1 - floor)) + 1)]:
        y = xy(1.0, a)[1]
        pen.line((left, y, width - right, y), fill=(225, 225, 225))
        pen.text((left - 40, y - 6), f"{100 * a:.0f}%", fill="black")
    for k in keeps:
        x = xy(k, floor)[0]
        pen.line((x, top, x, height - bottom), fill=(225, 225, 225))
        pen.text((x - 12, height - bottom + 8), f"{k:g}", fill="black")
    pen.text((width / 2 - 90, height - 25), "keep (fraction of 576 visual tokens)", fill="black")
    pen.text((left, 12), f"held-out accuracy, pruned at layer {layer}, {args.questions} questions", fill="black")
    # 20 distinguishable colours (matplotlib's tab20 order): one per recipe
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
               (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
               (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
               (196, 156, 148), (247, 182, 210), (0, 0, 0), (219, 219, 141), (158, 218, 229)]
    unpruned = tallies[("unpruned", 1.0, "-")].accuracy
    recipes = [r for r in args.recipes if (r, args.keeps[0], layer) in tallies]
    for i, recipe in enumerate(recipes):
        colour = palette[i % len(palette)]
        points = [xy(k, tallies[(recipe, k, layer)].accuracy) for k in args.keeps] + [xy(1.0, unpruned)]
        points.sort()
        pen.line(points, fill=colour, width=2)
        for x, y in points:
            pen.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        ly = top + 16 * i
        pen.line((width - right + 15, ly + 6, width - right + 40, ly + 6), fill=colour, width=3)
        pen.text((width - right + 46, ly), recipe, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _layer(text: str):
    return text if text == "input" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=trained.HELD_OUT_QUESTIONS)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--recipes", default=",".join(tokenprune.available("recipe")),
                        help="comma-separated recipe names (default: every registered recipe)")
    parser.add_argument("--keeps", default=",".join(map(str, KEEPS)))
    parser.add_argument("--layers", default="2", help='comma-separated pruning layers (ints or "input")')
    parser.add_argument("--threads", type=int, default=1, help="1 is fastest on a busy CPU")
    parser.add_argument("--model", type=Path, default=trained.MODEL_DIR, help="checkpoint folder")
    parser.add_argument("--out", type=Path, default=Path("accuracy-results"), help="folder for the table and plot")
    args = parser.parse_args()
    args.recipes = [r for r in args.recipes.split(",") if r]
    args.keeps = [float(k) for k in args.keeps.split(",")]
    args.layers = [_layer(x) for x in args.layers.split(",")]
    torch.set_num_threads(args.threads)
    tallies = measure(args)
    text = table(tallies, args)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.md").write_text(text + "\n")
    for layer in args.layers:
        plot(tallies, args, layer, args.out / f"accuracy-layer-{layer}.png")
    print(f"wrote {args.out / 'accuracy.md'} and accuracy-layer-*.png")


if __name__ == "__main__":
    main()
