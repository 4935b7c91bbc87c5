"""A model family tokenprune does not ship, as a third-party plugin: VipLlava
(``VipLlavaForConditionalGeneration``).

VipLlava's vision tower is CLIP; the features of several tower layers, each without its
CLS token, are concatenated per patch and projected, so every image fills its
placeholders with one ``(image_size / patch_size)``-square grid, row-major. Its language
model is Llama-like with 1-D positions, so every other family fact is the `Adapter`
default. After ``pip install``, ``tokenprune.prune(vipllava_model, ...)`` works.
"""

from __future__ import annotations

import tokenprune


class VipLlava(tokenprune.Adapter):
    name = "vipllava"
    description = "VipLlava (VipLlavaForConditionalGeneration): one square grid per image (plugin)"

    @classmethod
    def matches(cls, model):
        return getattr(getattr(model, "config", None), "model_type", None) == "vipllava"

    def layout(self, **inputs):
        input_ids = inputs["input_ids"]
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        counts = self.visual_mask(input_ids).sum(dim=1).tolist()
        per_image = side * side
        samples = []
        for b, count in enumerate(counts):
            if count % per_image:
                raise tokenprune.LayoutError(
                    f"input_ids: expected a multiple of {per_image} image tokens in sample {b}, "
                    f"got {count}"
                )
            images = count // per_image
            if images == 0:
                samples.append(tokenprune.Layout.empty())
            else:
                samples.append(tokenprune.Layout.regions_of([(side, side)] * images))
        return tokenprune.Layout.stack(samples).to(input_ids.device)


@tokenprune.hookimpl
def tokenprune_adapters():
    return [VipLlava]
