"""tokenprune.lmms.shapes_pope: the task files hold the benchmark's held-out questions."""

from __future__ import annotations

import json

from tokenprune import scenes, trained
from tokenprune.lmms import shapes_pope


def test_the_task_holds_the_held_out_questions_and_their_pictures(tmp_path):
    path = shapes_pope.write(tmp_path / "task", questions=6)
    docs = [json.loads(line) for line in (tmp_path / "task" / "test.jsonl").read_text().splitlines()]
    split = scenes.make_split(trained.HELD_OUT_SEED, 6)
    assert [(d["question"], d["answer"], d["kind"]) for d in docs] == [(q.text, q.answer, q.kind) for q in split.questions]
    for doc, question in zip(docs, split.questions):
        (image,) = shapes_pope.doc_to_visual(doc)
        assert image.mode == "RGB" and image.size == (336, 336)
        assert image.tobytes() == scenes.draw(split.scenes[question.scene]).convert("RGB").tobytes()
    text = path.read_text()
    assert "task: shapes_pope" in text and json.dumps(str(tmp_path / "task" / "test.jsonl")) in text
    assert "!function tokenprune.lmms.shapes_pope.process_results" in text


def test_the_score_is_the_expected_word():
    doc = {"question": "is there a red circle ?", "answer": "yes"}
    assert shapes_pope.doc_to_text(doc) == "is there a red circle ?"
    assert shapes_pope.process_results(doc, [" Yes"]) == {"accuracy": 1.0}
    assert shapes_pope.process_results(doc, ["no"]) == {"accuracy": 0.0}
    assert shapes_pope.process_results(doc, [""]) == {"accuracy": 0.0}


def test_the_chat_template_gives_the_benchmark_prompt():
    processor = trained.build_processor()
    question = "is the blue square on the left ?"
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    plain = [{"role": "user", "content": f"<image>\n{question}"}]
    want = processor.tokenizer(trained.prompt(question))["input_ids"]
    for text in (
        processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
        processor.tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True),
    ):
        assert processor.tokenizer(text)["input_ids"] == want
