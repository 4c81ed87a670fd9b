"""Training data formats -> exact token ids and labels (loss masks checked position by position)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from ibllm_agent.training.data.dataset import IGNORE_INDEX, PAD_INPUT, TrainDataset, collate, load_examples
from ibllm_agent.training.data.records import DataError, TarMember
from training_fixtures import one_thread  # noqa: F401 (autouse)

from ibllm_agent.model.tokenizer import tiny_tokenizer

# The reference's PROMPT_DICT text (spec §7), written out here rather than taken from ibllm_agent.prompts.
NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\n{instruction}\n\n### Response:")
WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
              "### Input:\n{input}\n\n### Response:")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _png(path: Path, color=(200, 30, 30)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), color).save(path)
    return path


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    return path


def _expect(tok, prompt: str, answer: str, max_words: int = 512):
    """Ids = encode(prompt+answer, BOS, EOS); the prompt's tokens (BOS included) are ignored."""
    ids = tok.encode(prompt + answer, bos=True, eos=True)[:max_words]
    n = len(tok.encode(prompt, bos=True, eos=False))
    assert ids[:n] == tok.encode(prompt, bos=True, eos=False)  # no merge across the boundary here
    return ids, [IGNORE_INDEX] * n + ids[n:]


def _check_item(ds, i, tok, prompt, answer):
    item = ds[i]
    ids, labels = _expect(tok, prompt, answer)
    assert item["input_ids"].tolist() == ids
    assert item["labels"].tolist() == labels
    # position by position: ignored exactly on the prompt, the answer + EOS trained
    lab = item["labels"]
    trained = (lab != IGNORE_INDEX).nonzero().flatten().tolist()
    n_prompt = len(tok.encode(prompt, bos=True))
    assert trained == list(range(n_prompt, len(ids)))
    assert lab[-1].item() == tok.eos_id and item["input_ids"][0].item() == tok.bos_id
    assert tok.decode(lab[lab != IGNORE_INDEX].tolist()) == answer


def test_alpaca_with_and_without_input(tmp_path, tok):
    f = _write(tmp_path / "a.json", [
        {"instruction": "Name a color.", "input": "", "output": "Blue."},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "The sum is 5."},
    ])
    ex, rep = load_examples([str(f)])
    assert rep.formats[str(f)] == "alpaca" and len(ex) == 2
    assert ex[0].prompt == NO_INPUT.format(instruction="Name a color.")
    assert ex[1].prompt == WITH_INPUT.format(instruction="Add the numbers.", input="2 and 3")
    assert "('" not in ex[0].prompt  # not the reference's 1-tuple rendering
    assert ex[0].image is None
    ds = TrainDataset(ex, tok, 512)
    _check_item(ds, 0, tok, ex[0].prompt, "Blue.")
    _check_item(ds, 1, tok, ex[1].prompt, "The sum is 5.")
    assert "feature" not in ds[0] and "pixels" not in ds[0]


def test_llava_every_turn_and_image_tag_removed(tmp_path, tok):
    img = _png(tmp_path / "coco" / "000001.jpg")
    f = _write(tmp_path / "llava.json", [{
        "id": "1", "image": "coco/000001.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"},
            {"from": "gpt", "value": "A red square."},
            {"from": "human", "value": "Is it big?"},
            {"from": "gpt", "value": "No, it is small."},
        ],
    }])
    ex, rep = load_examples([str(f)])
    assert rep.formats[str(f)] == "llava" and len(ex) == 2
    assert all(e.image == img.resolve() for e in ex)
    assert all("<image>" not in e.prompt and "<image>" not in e.answer for e in ex)
    assert ex[0].prompt == NO_INPUT.format(instruction="What is in the picture?")
    hist = "Previous conversation:\nHuman: What is in the picture?\nAI: A red square."
    assert ex[1].prompt == WITH_INPUT.format(instruction="Is it big?", input=hist)
    ds = TrainDataset(ex, tok, 512)
    _check_item(ds, 0, tok, ex[0].prompt, "A red square.")
    _check_item(ds, 1, tok, ex[1].prompt, "No, it is small.")  # the first answer is in the masked prompt
    assert ds[0]["pixels"].shape == (3, 224, 224)


def test_sharegpt_system_roles_and_leading_assistant(tmp_path, tok):
    f = _write(tmp_path / "sg.json", [{"id": "x", "conversations": [
        {"from": "gpt", "value": "Hi! How can I help?"},  # dropped: nothing precedes it
        {"from": "system", "value": "Be brief."},
        {"from": "user", "value": "Capital of France?"},
        {"from": "assistant", "value": "Paris."},
    ]}])
    ex, _ = load_examples([str(f)])
    assert len(ex) == 1 and ex[0].image is None
    assert ex[0].prompt == NO_INPUT.format(instruction="Be brief.\n\nCapital of France?")
    _check_item(TrainDataset(ex, tok, 512), 0, tok, ex[0].prompt, "Paris.")


def test_minigpt4_detailed_descriptions(tmp_path, tok):
    _png(tmp_path / "image" / "2.jpg")
    f = _write(tmp_path / "filter_cap.json", {"annotations": [{"image_id": "2", "caption": "A red square on white."},
                                                              {"image_id": "3", "caption": "Missing image."}]})
    ex, rep = load_examples([str(f)])
    assert rep.formats[str(f)] == "minigpt4"
    assert len(ex) == 1 and rep.missing_images == 1 and ex[0].image == (tmp_path / "image" / "2.jpg").resolve()
    from ibllm_agent.training.data.formats import DETAIL_INSTRUCTIONS

    assert any(ex[0].prompt == NO_INPUT.format(instruction=d) for d in DETAIL_INSTRUCTIONS)
    _check_item(TrainDataset(ex, tok, 512), 0, tok, ex[0].prompt, "A red square on white.")


def test_gpt4tools_image_injection_and_placeholder(tmp_path, tok):
    root = tmp_path / "imgs"
    img = _png(root / "image" / "abcdefgh.png")
    base = "GPT4Tools can handle various text and visual tasks.\n"
    f = _write(tmp_path / "g4t.json", [
        {"instruction": base + "Human: Provide an image named image/abcdefgh.png. Description: a square.",
         "input": "", "output": "Thought: Do I need to use a tool? No\nAI: A square.\n"},
        {"instruction": base + "Human: Provide an image named image/zzzzzzzz.png. Description: x.",
         "input": "", "output": "Thought: Do I need to use a tool? No\nAI: x"},
        {"instruction": base + "Human: Tell me a joke. Also try ../../etc/passwd.png", "input": "",
         "output": "Thought: Do I need to use a tool? No\nAI: no"},
    ])
    ex, rep = load_examples([str(f)], image_root=str(root))
    assert rep.formats[str(f)] == "gpt4tools" and len(ex) == 3
    assert ex[0].image == img.resolve()
    assert ex[1].image is None and ex[1].image_missing  # placeholder, counted
    assert ex[2].image is None  # a name outside the image root is never opened
    assert rep.missing_images == 1
    assert ex[0].answer == "Thought: Do I need to use a tool? No\nAI: A square."  # stripped like train.py
    assert ex[0].prompt == NO_INPUT.format(instruction=base + "Human: Provide an image named image/abcdefgh.png. "
                                                             "Description: a square.")
    ds = TrainDataset(ex, tok, 512)
    _check_item(ds, 0, tok, ex[0].prompt, ex[0].answer)
    assert "pixels" in ds[0] and "pixels" not in ds[1]


def test_tsv_pairs_missing_images_and_malformed_lines(tmp_path, tok):
    img = _png(tmp_path / "a.jpg")
    f = tmp_path / "pairs.tsv"
    f.write_text("url\tcaption\n"
                 f"{img}\tA red square.\n"
                 "missing.jpg\tNot there.\n"
                 "only-one-column\n", encoding="utf-8")
    ex, rep = load_examples([str(f)])
    assert len(ex) == 1 and ex[0].image == img.resolve()
    assert ex[0].prompt == NO_INPUT.format(instruction="Generate caption of this image")
    assert rep.missing_images == 1 and rep.skipped_records == 1
    assert rep.errors == [f"{f}:4: expected 2 tab-separated columns, got 1"]
    with pytest.raises(DataError, match=rf"{f.name}:4: expected 2"):
        load_examples([str(f)], on_error="fail")
    _check_item(TrainDataset(ex, tok, 512), 0, tok, ex[0].prompt, "A red square.")


def test_webdataset_shard(tmp_path, tok):
    from PIL import Image

    shard = tmp_path / "00000.tar"
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 0, 255)).save(buf, format="JPEG")
    with tarfile.open(shard, "w") as tf:
        for name, data in (("000000000.jpg", buf.getvalue()), ("000000000.txt", b"A blue square."),
                           ("000000000.json", b"{}"), ("000000001.txt", b"caption without image")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    ex, rep = load_examples([str(tmp_path / "*.tar")])
    assert len(ex) == 1 and rep.skipped_records == 1 and isinstance(ex[0].image, TarMember)
    assert ex[0].image.read() == buf.getvalue()
    assert rep.errors == [f"{shard}:000000001: shard sample needs an image member and a .txt caption"]
    _check_item(TrainDataset(ex, tok, 512), 0, tok, ex[0].prompt, "A blue square.")


def test_malformed_json_records_name_their_line(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('[\n {"instruction": "a", "input": "", "output": "b"},\n\n {"instruction": 5, "output": "c"}\n]\n')
    ex, rep = load_examples([str(f)], data_format="alpaca")
    assert len(ex) == 1 and rep.errors == [f"{f}:4: field 'instruction' must be a string, got int"]
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"instruction": "a", "input": "", "output": "b"}\n{not json}\n')
    _, rep = load_examples([str(jl)], data_format="alpaca")
    assert rep.skipped_records == 1 and rep.errors[0].startswith(f"{jl}:2: invalid JSON")
    with pytest.raises(DataError, match="no data files"):
        load_examples([])


def test_truncation_and_answers_beyond_max_words(tmp_path, tok):
    f = _write(tmp_path / "a.json", [{"instruction": "Say hello.", "input": "", "output": "Hello there, friend."}])
    ex, _ = load_examples([str(f)])
    n_prompt = len(tok.encode(ex[0].prompt))
    ds = TrainDataset(ex, tok, n_prompt + 2)
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    full = tok.encode(ex[0].prompt + ex[0].answer, bos=True, eos=True)
    assert ids.tolist() == full[:n_prompt + 2] and ds.report.truncated == 1
    assert labels.tolist() == [IGNORE_INDEX] * n_prompt + full[n_prompt:n_prompt + 2]
    dropped = TrainDataset(ex, tok, n_prompt)
    assert len(dropped) == 0 and dropped.report.dropped_no_target == 1


def test_collate_pads_right_and_marks_images():
    a = {"input_ids": torch.tensor([1, 5, 6]), "labels": torch.tensor([IGNORE_INDEX, 5, 6]), "where": "a",
         "feature": torch.ones(4)}
    b = {"input_ids": torch.tensor([1, 7]), "labels": torch.tensor([IGNORE_INDEX, 7]), "where": "b"}
    out = collate([a, b])
    assert out["input_ids"].tolist() == [[1, 5, 6], [1, 7, PAD_INPUT]]
    assert out["labels"].tolist() == [[IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7, IGNORE_INDEX]]
    assert out["has_image"].tolist() == [True, False] and out["n_tokens"] == 5
    assert out["features"].tolist() == [[1.0] * 4, [0.0] * 4] and out["pixels"] is None


def test_synthetic_data_set_loads_in_every_format(tmp_path, tok):
    from ibllm_agent.training.synthetic import generate

    generate(tmp_path / "syn")
    expect = {"image_text.tsv": "tsv", "alpaca.json": "alpaca", "llava.json": "llava", "sharegpt.json": "sharegpt",
              "gpt4tools_train.json": "gpt4tools"}
    for name, fmt in expect.items():
        ex, rep = load_examples([str(tmp_path / "syn" / name)])
        assert rep.formats[str(tmp_path / "syn" / name)] == fmt and rep.skipped_records == 0 and ex, name
        assert all("<image>" not in e.prompt + e.answer for e in ex)
        if fmt in ("tsv", "llava"):
            assert all(e.image is not None for e in ex)
        ds = TrainDataset(ex[:5], tok, 2048)
        assert all((ds[i]["labels"] != IGNORE_INDEX).sum() > 0 for i in range(len(ds)))
