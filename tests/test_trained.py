"""The shapes model's processor, built offline: word-level tokenizer, CLIP image processor,
576 placeholders per image, and a save/load round trip."""

from __future__ import annotations

import pytest

from tokenprune import scenes, trained


def test_processor_round_trip_and_576_placeholders(tmp_path):
    built = trained.build_processor()
    built.save_pretrained(tmp_path)
    from transformers import LlavaProcessor

    loaded = LlavaProcessor.from_pretrained(tmp_path)
    text = trained.prompt("is the yellow triangle on the right ?")
    assert loaded.tokenizer(text)["input_ids"] == built.tokenizer(text)["input_ids"]
    assert "<unk>" not in loaded.tokenizer.convert_ids_to_tokens(loaded.tokenizer(text)["input_ids"])
    inputs = trained.batch_inputs(loaded, scenes.make_split(0, 2), [0, 1])
    image_token = loaded.tokenizer.convert_tokens_to_ids("<image>")
    assert (inputs["input_ids"] == image_token).sum(-1).tolist() == [576, 576]
    assert inputs["pixel_values"].shape == (2, 3, 336, 336)
    # left padding: every prompt ends with the token before the answer
    assert (inputs["input_ids"][:, -1] == loaded.tokenizer.convert_tokens_to_ids("ASSISTANT:")).all()


def test_load_without_a_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="training/train_shapes.py"):
        trained.load(tmp_path / "missing")
