"""The ``tokenprune`` command: ``demo``, ``list`` and ``select``.

User mistakes (unknown recipe, bad ``--keep``, missing or malformed file) print one line
``tokenprune: error: ...`` to stderr and exit with status 2; ``main`` returns the status
instead of exiting, so it can be called in-process: ``main(["list"])``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from tokenprune.errors import TokenpruneError
from tokenprune.registry import KINDS, get_registry
from tokenprune.selection import Keep

__all__ = ["main", "parse_grid", "parse_keep"]

USAGE_ERROR = 2


class UsageError(TokenpruneError):
    """A command-line argument is invalid."""


# --------------------------------------------------------------------------- parsing
def parse_keep(text: str) -> Keep:
    """``"0.1"`` -> 0.1 (a fraction in (0, 1]), ``"57"`` -> 57 (a count >= 1)."""
    try:
        value: Keep = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a fraction in (0, 1] such as 0.1 or a count such as 57, got {text!r}"
            ) from None
    if isinstance(value, int) and value < 1:
        raise argparse.ArgumentTypeError(f"expected a count >= 1 or a fraction in (0, 1], got {text!r}")
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1] or a whole count, got {text!r}")
    return value


def parse_grid(text: str) -> tuple[int, int]:
    """``"24x24"`` -> (24, 24)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH with positive ints such as 24x24, got {text!r}")
    return int(parts[0]), int(parts[1])


def _recipes(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated recipe names, got {text!r}")
    return names


class _Parser(argparse.ArgumentParser):
    """Reports errors as one line and a status, without printing the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    from tokenprune.demo import DEFAULT_RECIPES

    parser = _Parser(
        prog="tokenprune",
        description="Training-free visual-token pruning for vision-language models.",
        epilog="Run 'tokenprune COMMAND --help' for the options of a command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    demo = commands.add_parser(
        "demo",
        help="prune a LLaVA-1.5-shaped model inside generate() (offline, CPU)",
        description=(
            "Run a small LLaVA of LLaVA-1.5's geometry (336 px CLIP tower, 576 visual tokens "
            "on 24x24) with generate() unpruned and with each recipe, print a table (visual "
            "tokens kept, accuracy, prefill time, speedup, KV cache per layer, generated ids) "
            "and write one picture per recipe. The default model is tokenprune's trained "
            "shapes model (accuracy on held-out yes/no questions; its attention drawn over "
            "the scene); --model llava or qwen2_5_vl builds a random-weight one, whose "
            "attention is meaningless."
        ),
    )
    demo.add_argument("--out", type=Path, default=Path("tokenprune-demo"), metavar="DIR",
                      help="folder for the pictures and table.txt (default: %(default)s)")
    demo.add_argument("--keep", type=parse_keep, default=0.1,
                      help="visual tokens to keep: a fraction in (0, 1] (floor(576 * keep)) "
                      "or a count (default: %(default)s)")
    demo.add_argument("--recipes", type=_recipes, default=DEFAULT_RECIPES, metavar="A,B,...",
                      help="comma-separated recipe names, see 'tokenprune list' "
                      f"(default: {','.join(DEFAULT_RECIPES)})")
    demo.add_argument("--layer", type=int, default=2, metavar="K",
                      help="layers 0..K-1 see every token, layers K.. only the kept ones (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seed of weights, prompt and random recipes (default: %(default)s)")
    demo.add_argument("--new-tokens", type=int, default=None, metavar="T",
                      help="tokens generated per run (default: 1 with --model shapes, whose "
                      "answer is one token; else 8)")
    demo.add_argument("--repeats", type=int, default=3, metavar="R",
                      help="timing rounds over all runs; each run shows its fastest prefill "
                      "(default: %(default)s)")
    demo.add_argument("--text-layers", type=int, default=8, metavar="L",
                      help="depth of the random Llama text model (default: %(default)s; not --model shapes)")
    demo.add_argument("--hidden", type=int, default=512, metavar="H",
                      help="width of the random Llama text model, a multiple of 8 (default: %(default)s)")
    demo.add_argument("--model", choices=("shapes", "llava", "qwen2_5_vl"), default="shapes",
                      help="shapes: the trained shapes model (tokenprune.trained); llava: random "
                      "weights, LLaVA-1.5's geometry; qwen2_5_vl: random weights, Qwen2.5-VL-7B's "
                      "(392 px image, 28x28 patches, 2x2 merge: 196 visual tokens, M-RoPE) "
                      "(default: %(default)s)")
    demo.add_argument("--questions", type=int, default=48, metavar="Q",
                      help="held-out questions each run answers for the accuracy column "
                      "(--model shapes; default: %(default)s)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(handler=_demo)

    listing = commands.add_parser(
        "list",
        help="every registered recipe, strategy, decay, adapter and cue",
        description="List registered names with kind, one-line description and providing plugin.",
    )
    listing.add_argument("--kind", choices=KINDS, help="only this kind")
    listing.set_defaults(handler=_list)

    select = commands.add_parser(
        "select",
        help="run a pruner on cues saved to a file; write the selection and its picture",
        description=(
            "Run a pruner on cues saved with tokenprune.viz.save_cues (or any .pt / "
            ".safetensors dict with keys attention, keys, hidden, text_attention, "
            "self_attention and the layout tensors coords, regions, region_shapes, valid; "
            "use --grid when no layout is saved). Writes the selection and a picture."
        ),
    )
    select.add_argument("cues", type=Path, help="the cues file (.pt or .safetensors)")
    select.add_argument("--recipe", default="adaptprune", metavar="SPEC",
                        help="recipe name or spec string, e.g. 'attention | gaussian | top_k' "
                        "(default: %(default)s)")
    select.add_argument("--keep", type=parse_keep, default=0.1,
                        help="a fraction in (0, 1] of each sample's valid tokens or a count (default: %(default)s)")
    select.add_argument("--grid", type=parse_grid, metavar="HxW",
                        help="layout of files without one: one HxW row-major region")
    select.add_argument("--out", type=Path, default=Path("selection.json"), metavar="FILE",
                        help="where to write the selection: .json or .pt (default: %(default)s)")
    select.add_argument("--picture", type=Path, metavar="PNG",
                        help="where to write the picture (default: the --out path with .png)")
    select.add_argument("--image", type=Path, help="an image to draw under the grid")
    select.add_argument("--sample", type=int, default=0, help="which sample to draw (default: %(default)s)")
    select.add_argument("--seed", type=int, default=0, help="seed of random strategies (default: %(default)s)")
    select.set_defaults(handler=_select)
    return parser


# -------------------------------------------------------------------------- commands
def _progress(enabled: bool, out: TextIO):
    def wrap(items: Sequence[str]):
        if not enabled:
            return items
        try:
            from tqdm import tqdm
        except ImportError:
            return _plain_progress(items, out)
        return _named_bar(tqdm(items, desc="runs", unit="run", file=out, leave=False))

    return wrap


def _named_bar(bar: Any):
    for item in bar:
        bar.set_postfix_str(item)
        yield item


def _plain_progress(items: Sequence[str], out: TextIO):
    for i, item in enumerate(items):
        print(f"[{i + 1}/{len(items)}] {item}", file=out, flush=True)
        yield item


def _demo(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from tokenprune import demo

    config = demo.DemoConfig(
        keep=args.keep,
        recipes=args.recipes,
        layer=args.layer,
        seed=args.seed,
        new_tokens=(1 if args.model == "shapes" else 8) if args.new_tokens is None else args.new_tokens,
        repeats=args.repeats,
        text_layers=args.text_layers,
        hidden=args.hidden,
        model=args.model,
        questions=args.questions,
    )
    _check_writable_dir("--out", args.out)  # before minutes of work, not after
    if config.model == "shapes":
        question = demo.shapes_question(config.seed)
        print(f"tokenprune demo: the trained shapes model, keep={config.keep}, layer={config.layer}, "
              f"accuracy on {config.questions} held-out questions; prompt: {question.text!r} "
              f"(right answer: {question.answer})", file=stdout, flush=True)
        notice = demo.SHAPES_NOTICE
    else:
        geometry = "Qwen2.5-VL-7B" if config.model == "qwen2_5_vl" else "LLaVA-1.5"
        print(f"tokenprune demo: random-weight {geometry} geometry, keep={config.keep}, layer={config.layer}, "
              f"{config.text_layers} text layers of width {config.hidden}", file=stdout, flush=True)
        notice = demo.NOTICE
    results, image = demo.run(config, progress=_progress(not args.no_progress, stderr))
    table = demo.format_table(results)
    written = demo.write_pictures(results, image, args.out)
    (args.out / "table.txt").write_text(table + "\n\n" + notice + "\n")
    print(table, file=stdout)
    print(file=stdout)
    print(notice, file=stdout)
    print(f"\nPictures ({len(written)}) and table.txt written to {args.out}/", file=stdout)
    return 0


def _list(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    registry = get_registry()
    rows = [("kind", "name", "plugin", "description")]
    for kind in [args.kind] if args.kind else KINDS:
        for entry in registry.entries(kind):
            rows.append((kind, entry.name, entry.plugin, entry.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3], file=stdout)
    return 0


def _select(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    import tokenprune
    from tokenprune.viz import draw_selection, load_cues, save_selection

    picture_path = args.picture or args.out.with_suffix(".png")
    if args.out.suffix.lower() not in (".json", ".pt"):
        raise UsageError(f"--out: expected a file name ending in .json or .pt, got {str(args.out)!r}")
    if picture_path.suffix.lower() != ".png":
        raise UsageError(f"--picture: expected a file name ending in .png, got {str(picture_path)!r}")
    _check_writable_file("--out", args.out)
    _check_writable_file("--picture", picture_path)
    generator = torch.Generator().manual_seed(args.seed)
    cues = load_cues(args.cues, grid=args.grid, generator=generator)
    pruner = tokenprune.pruner(args.recipe, keep=args.keep)
    if not 0 <= args.sample < cues.batch_size:
        raise UsageError(f"--sample: expected an int in [0, {cues.batch_size}), got {args.sample}")
    image = None
    if args.image is not None:
        image = _open_image(args.image)
    selection = pruner(cues)
    out = save_selection(args.out, selection)
    title = f"{pruner.name or pruner.spec}: {int(selection.counts[args.sample])} of " \
            f"{int(cues.layout.num_valid()[args.sample])} kept"
    draw_selection(cues.layout, selection, image, sample=args.sample, title=title).save(picture_path)
    counts = ", ".join(str(c) for c in selection.counts.tolist())
    print(f"{pruner!r}", file=stdout)
    print(f"kept per sample: {counts} (of {', '.join(str(n) for n in cues.layout.num_valid().tolist())})", file=stdout)
    print(f"selection: {out}\npicture: {picture_path}", file=stdout)
    return 0


def _check_writable_dir(option: str, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option}: expected a directory (new or existing), got {str(path)!r}, an existing file")
    parent = _existing_ancestor(path)
    if not parent.is_dir():
        raise UsageError(f"{option}: expected a directory we can create, got {str(path)!r} ({str(parent)!r} is a file)")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{option}: expected a directory we can create or write, got {str(path)!r} ({str(parent)!r} is not writable)")
    # Permission bits do not tell everything (root, read-only mounts, /proc): try it.
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"{option}: expected a directory we can create or write, got {str(path)!r} ({exc.strerror or exc})") from None


def _check_writable_file(option: str, path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"{option}: expected a file name, got {str(path)!r}, a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{option}: expected a file in an existing directory, got {str(path)!r} ({str(parent)!r} does not exist)")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{option}: expected a writable file, got {str(path)!r} (permission denied)")
    existed = path.exists()
    try:  # permission bits do not tell everything (root, read-only mounts): try it
        with open(path, "ab"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        raise UsageError(f"{option}: expected a writable file, got {str(path)!r} ({exc.strerror or exc})") from None


def _existing_ancestor(path: Path) -> Path:
    """The nearest existing directory at or above ``path`` (where mkdir would start)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _open_image(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise UsageError(f"--image: expected an existing image file, got {str(path)!r} (not found)")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"--image: expected an image file PIL can read, got {str(path)!r} ({exc})") from None


# ------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        with contextlib.redirect_stdout(stdout):  # argparse prints --help to sys.stdout
            args = build_parser().parse_args(argv)
        return args.handler(args, stdout, stderr)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except (TokenpruneError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        prefix = "" if message.startswith("tokenprune") else "tokenprune: error: "
        print(f"{prefix}{message}", file=stderr)
        return USAGE_ERROR
