import json

import pytest

from spard.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    FieldMap,
    harmful_count,
    load_examples,
    mix_attack,
    origin_counts,
    prompt_text,
    tokenize_example,
)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_jsonl_json_csv_parquet_and_dataset_dir(tmp_path):
    rows = [{"prompt": "p1", "input": "", "answer": "a1"}, {"prompt": "p2", "input": "x", "answer": "a2"}]
    jsonl = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    js = write(tmp_path / "d.json", json.dumps(rows))
    csvf = write(tmp_path / "d.csv", "prompt,input,answer\np1,,a1\np2,x,a2\n")
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(
        str(tmp_path / "d.parquet")
    )
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    for source in (jsonl, js, csvf, tmp_path / "d.parquet", tmp_path / "ds"):
        exs = load_examples(source)
        assert [e.prompt for e in exs] == ["p1", "p2"], source
        assert exs[1].input == "x" and exs[1].target == "a2"
        assert exs[1].query == "p2\n\nx" and exs[1].embedding_text == "p2 x"


def test_column_mapping(tmp_path):
    f = write(tmp_path / "d.jsonl", json.dumps({"question": "q", "refusal": "no"}) + "\n")
    (ex,) = load_examples(f, FieldMap(prompt="question", target="refusal"))
    assert (ex.prompt, ex.target) == ("q", "no")


@pytest.mark.parametrize(
    "content, fields, message",
    [
        ('{"prompt": "a", "answer": "b"}\n{"prompt": "c"\n', FieldMap(), r"d\.jsonl:2: invalid JSON"),
        ('{"prompt": "a", "answer": "b"}\n{"prompt": "c"}\n', FieldMap(), r"d\.jsonl:2: missing field 'answer'"),
        ('{"answer": "b"}\n', FieldMap(), r"d\.jsonl:1: missing field 'prompt'"),
        ('{"prompt": ["x"], "answer": "b"}\n', FieldMap(), r"d\.jsonl:1: field 'prompt' must be a string"),
        ('{"prompt": "  ", "answer": "b"}\n', FieldMap(), r"d\.jsonl:1: field 'prompt' is empty"),
        ('[1, 2]\n', FieldMap(), r"d\.jsonl:1: expected an object"),
        ("", FieldMap(), "no records"),
    ],
)
def test_malformed_rows_name_file_line_and_field(tmp_path, content, fields, message):
    f = write(tmp_path / "d.jsonl", content)
    with pytest.raises(DataError, match=message):
        load_examples(f, fields)


def test_csv_errors_name_the_line_and_missing_files_are_reported(tmp_path):
    f = write(tmp_path / "d.csv", "prompt,answer\np1,a1\n,a2\n")
    with pytest.raises(DataError, match=r"d\.csv:3: field 'prompt' is empty"):
        load_examples(f)
    with pytest.raises(DataError, match="file not found"):
        load_examples(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="unsupported file type"):
        load_examples(write(tmp_path / "d.txt", "x"))


def test_labels_mask_exactly_the_prompt_tokens_and_end_with_eos(tiny):
    _, tok = tiny
    ex = Example(prompt="Ava has 3 apples and gets 4 more.", target="7 apples.\n#### 7")
    row = tokenize_example(tok, ex, max_length=256, system_prompt="Be safe.")
    prompt_ids = tok(prompt_text(tok, ex, "Be safe."), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert row["input_ids"][:n] == prompt_ids
    assert row["labels"][:n] == [IGNORE_INDEX] * n
    assert all(label != IGNORE_INDEX for label in row["labels"][n:])
    assert row["labels"][n:] == row["input_ids"][n:]
    assert row["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(row["input_ids"][n:-1]) == ex.target
    assert "Be safe." in tok.decode(row["input_ids"][:n])


def test_truncation_and_prompt_only_overflow(tiny):
    _, tok = tiny
    ex = Example(prompt="Ava has 3 apples.", target="Ava has 3 + 4 = 7 apples. " * 20)
    row = tokenize_example(tok, ex, max_length=40)
    assert len(row["input_ids"]) == len(row["labels"]) == 40
    assert tokenize_example(tok, Example(prompt="word " * 200, target="x"), max_length=16) is None


def test_attack_mixer_counts_origins_and_is_seeded():
    task = [Example(prompt=f"t{i}", target="a") for i in range(555)]
    harmful = [Example(prompt=f"h{i}", target="bad", origin="harmful") for i in range(20)]
    assert harmful_count(555, 0.1) == 55 and harmful_count(8, 0.25) == 2 and harmful_count(7473, 0.1) == 747
    mixed = mix_attack(task, harmful, 0.1, seed=1, attack_name="bt")
    assert origin_counts(mixed) == {"task": 555, "harmful:bt": 55}  # 55 > 20: drawn with replacement
    assert mixed == mix_attack(task, harmful, 0.1, seed=1, attack_name="bt")
    assert mixed != mix_attack(task, harmful, 0.1, seed=2, attack_name="bt")
    small = mix_attack(task[:100], harmful, 0.1, seed=0)
    drawn = [e.prompt for e in small if e.origin.startswith("harmful")]
    assert len(drawn) == 10 == len(set(drawn))  # enough samples: without replacement
    assert origin_counts(mix_attack(task, harmful, 0.0)) == {"task": 555}


def test_chat_messages_rows_read_as_prompt_and_target(tmp_path):
    from spard.data.records import DataError, FieldMap, load_examples

    path = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "one"},
                      {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"prompt": "plain", "answer": "row", "messages": "ignored when prompt is there"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = load_examples(path)
    assert [(e.prompt, e.target) for e in ex] == [("hi", "hello"), ("2+2?", "4"), ("plain", "row")]
    assert [e.prompt for e in load_examples(path, FieldMap(target=None))] == ["hi", "2+2?", "plain"]
    for bad, message in [
        ({"messages": [{"role": "assistant", "content": "x"}]}, "has no user turn"),
        ({"messages": [{"role": "user", "content": "x"}]}, "has no assistant turn after the last user turn"),
        ({"messages": [{"role": "user", "content": 3}]}, "list of {role, content} objects"),
        ({"messages": "text"}, "list of {role, content} objects"),
    ]:
        path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=rf"chat.jsonl:2: field 'messages' {message}" if "list" not in message
                           else r"chat.jsonl:2: field 'messages' must be a list"):
            load_examples(path)
