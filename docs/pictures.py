"""Draw the documentation's pictures into docs/img (run from the repository root).

    python docs/pictures.py [OUT_DIR]

Every picture comes from `tokenprune.viz` on a layout built by tokenprune's own adapters
(from transformers config objects, no weights) and on *synthetic* cues: an attention
map with the positional bias the AdaptPrune paper describes (more attention at the end
of the image sequence) plus the image's salient cells, and keys from the image's colours
(neighbouring cells of one colour are similar). They show what each strategy does with
such cues, not what a trained model attends to. Deterministic: the same files each run.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

import tokenprune
from tokenprune import viz
from tokenprune.adapters import internvl, llava_next, qwen_vl
from tokenprune.adapters import layout as adapter_layout
from tokenprune.strategies.transforms import gaussian_map

IMAGE_TOKEN = 120
RECIPES = ("fastv", "adaptprune_correction", "adaptprune_spatial", "adaptprune", "fitprune",
           "skip", "random", "grid_random", "grid_max", "avg_pool", "last")


def llava_layout() -> tokenprune.Layout:
    from transformers import LlavaConfig

    model = types.SimpleNamespace(config=LlavaConfig(image_token_index=IMAGE_TOKEN))
    ids = torch.tensor([[1, *[IMAGE_TOKEN] * 576, 5]])
    return adapter_layout(model, input_ids=ids)


def llava_next_layout(size: tuple[int, int]) -> tokenprune.Layout:
    from transformers import CLIPVisionConfig, LlavaNextConfig

    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(image_size=336, patch_size=14),
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        image_token_index=IMAGE_TOKEN,
    )
    ids = torch.tensor([[1, *[IMAGE_TOKEN] * llava_next.tokens_per_image(config, size), 5]])
    return adapter_layout(types.SimpleNamespace(config=config), input_ids=ids, image_sizes=torch.tensor([size]))


def internvl_layout(size: tuple[int, int]) -> tokenprune.Layout:
    from transformers import InternVLConfig

    config = InternVLConfig(image_token_id=IMAGE_TOKEN)
    tiles = internvl.tiles_per_image(internvl.canvas(size, (448, 448), 1, 12))
    ids = torch.tensor([[1, 121, *[IMAGE_TOKEN] * (256 * tiles), 122, 5]])
    return adapter_layout(types.SimpleNamespace(config=config), input_ids=ids, image_sizes=[size])


VIDEO_TOKEN = 123


def qwen_vl_layout() -> tokenprune.Layout:
    """A Qwen2.5-VL prompt: a 280 x 392 px image (20 x 28 patches: 10 x 14 tokens), then a
    6-frame 168 x 224 px video (3 temporal groups of 6 x 8 tokens)."""
    from transformers import Qwen2_5_VLConfig

    config = Qwen2_5_VLConfig(image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN)
    ids = torch.tensor([[1, 124, *[IMAGE_TOKEN] * 140, 125, 7, 124, *[VIDEO_TOKEN] * 144, 125, 5]])
    return qwen_vl.layout(
        types.SimpleNamespace(config=config),
        input_ids=ids,
        image_grid_thw=torch.tensor([[1, 20, 28]]),
        video_grid_thw=torch.tensor([[3, 12, 16]]),
    )


def synthetic_cues(layout: tokenprune.Layout, image, seed: int = 0) -> tokenprune.Cues:
    """Cues for sample 0 of ``layout``: attention ``(1, N)`` (end-of-sequence bias plus
    colour saliency), keys ``(1, N, 16)`` (cell colour plus a little noise), and FitPrune's
    two attention cues (the same map, and a flatter one)."""
    g = torch.Generator().manual_seed(seed)
    n = layout.num_tokens
    rgb = image.convert("RGB")
    width, height = rgb.size
    pixels = rgb.load()
    shapes = layout.region_shapes[0].tolist()
    boxes = layout.region_boxes[0].tolist() if layout.region_boxes is not None else None
    colour = torch.rand(n, 3, generator=g)
    for i, (r, (y, x)) in enumerate(zip(layout.regions[0].tolist(), layout.coords[0].tolist())):
        if r < 0 or boxes is None or any(v != v for v in boxes[r]):
            continue
        top, left, bottom, right = boxes[r]
        h, w = shapes[r]
        fy = top + (y + 0.5) / h * (bottom - top)
        fx = left + (x + 0.5) / w * (right - left)
        px = pixels[min(int(fx * width), width - 1), min(int(fy * height), height - 1)]
        colour[i] = torch.tensor(px, dtype=torch.float32) / 255
    saliency = (colour - colour.median(dim=0).values).norm(dim=1)
    position = torch.arange(n, dtype=torch.float32)
    bias = torch.exp((position - n) / (0.08 * n))
    attention = 0.6 * bias / bias.max() + 0.4 * saliency / saliency.max()
    attention = attention + 0.05 * torch.rand(n, generator=g)
    attention = (attention / attention.sum()).unsqueeze(0)
    keys = torch.cat([colour * 4 - 2, 0.1 * torch.randn(n, 13, generator=g)], dim=1).unsqueeze(0)
    flat = (0.5 + saliency / saliency.max()).unsqueeze(0)
    return tokenprune.Cues(
        layout, attention=attention, keys=keys, text_attention=attention, self_attention=flat / flat.sum(),
        generator=torch.Generator().manual_seed(seed),
    )


def draw(out: Path) -> list[Path]:
    """Write every picture to ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(picture, name: str) -> None:
        path = out / f"{name}.png"
        picture.save(path, optimize=True)
        written.append(path)

    image = viz.synthetic_image(336, 336)
    layout = llava_layout()
    cues = synthetic_cues(layout, image)
    save(image, "input")
    save(viz.draw_values(layout, cues.attention, title="synthetic attention (end-of-sequence bias)"), "attention")
    save(viz.draw_values(layout, gaussian_map(layout), title="gaussian correction factor", vmin=0.0, vmax=1.0),
         "gaussian")
    for name in RECIPES:
        pruner = tokenprune.pruner(name, keep=0.1)
        selection = pruner(cues)
        save(viz.draw_selection(layout, selection, image, title=f"{name}: {int(selection.counts[0])} of 576"),
             f"recipe-{name}")

    order = torch.arange(576, dtype=torch.float32).unsqueeze(0)
    save(viz.draw_values(layout, order, title="LLaVA-1.5: sequence index of each token"), "layout-llava")
    for name, lay, size in (
        ("llava_next", llava_next_layout((500, 700)), (500, 700)),
        ("internvl", internvl_layout((600, 900)), (600, 900)),
    ):
        picture = viz.synthetic_image(*size)
        order = torch.arange(lay.num_tokens, dtype=torch.float32).unsqueeze(0)
        save(viz.draw_values(lay, order, title=f"{name}: sequence index of each token ({lay.num_tokens} tokens)"),
             f"layout-{name}")
        selection = tokenprune.pruner("adaptprune", keep=0.1)(synthetic_cues(lay, picture))
        save(viz.draw_selection(lay, selection, picture, title=f"{name}: adaptprune keeps "
                                f"{int(selection.counts[0])} of {lay.num_tokens}"), f"select-{name}")
    lay = qwen_vl_layout()
    picture = viz.synthetic_image(280, 392)
    order = torch.arange(lay.num_tokens, dtype=torch.float32).unsqueeze(0)
    save(viz.draw_values(lay, order, title=f"qwen_vl: an image and 3 video frames ({lay.num_tokens} tokens)"),
         "layout-qwen_vl")
    selection = tokenprune.pruner("adaptprune_video", keep=0.1)(synthetic_cues(lay, picture))
    save(viz.draw_selection(lay, selection, [picture, picture], title=f"qwen_vl: adaptprune_video keeps "
                            f"{int(selection.counts[0])} of {lay.num_tokens}"), "select-qwen_vl")
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "img"
    for path in draw(target):
        print(path)
