"""Dataset loading: every input shape, normalisation, dedupe, seeded split, row-level errors."""

import json

import pytest

from jupyter_distill.core.data import load_dataset, split
from jupyter_distill.core.errors import DatasetError


def rows(n):
    return [{"prompt": f"question {i}", "expected": str(i)} for i in range(n)]


def test_list_of_dicts_becomes_chat_messages_with_reference_fields():
    prompts = load_dataset(rows(3))
    assert prompts[0].messages == [{"role": "user", "content": "question 0"}]
    assert prompts[1].row == {"expected": "1"}
    assert [p.position for p in prompts] == [0, 1, 2]


def test_strings_messages_and_system_prompt():
    prompts = load_dataset(["plain", {"messages": [{"role": "user", "content": "chat"}]}], system_prompt="Be brief.")
    assert prompts[0].messages[0] == {"role": "system", "content": "Be brief."}
    assert prompts[1].messages[-1] == {"role": "user", "content": "chat"}


def test_dedupe_by_content_hash():
    prompts = load_dataset([{"prompt": "same"}, {"prompt": "same"}, {"prompt": "other"}])
    assert len(prompts) == 2


def test_jsonl_csv_json_parquet_dataframe_dataset_and_callable(tmp_path):
    data = rows(4)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in data) + "\n\n")
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("prompt,expected\n" + "\n".join(f"{r['prompt']},{r['expected']}" for r in data))
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps(data))
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(data)
    parquet = tmp_path / "d.parquet"
    frame.to_parquet(parquet)
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_list(data)
    expected = [p.hash for p in load_dataset(data)]
    for source in (jsonl, str(csv_path), json_path, parquet, frame, hf, lambda: data):
        assert [p.hash for p in load_dataset(source)] == expected, source


def test_max_prompts():
    assert len(load_dataset(rows(10), max_prompts=3)) == 3


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ([], "no rows"),
        ([{"text": "x"}], "row 1 has no 'prompt'"),
        ([{"prompt": "ok"}, {"prompt": 3}], "row 2"),
        ([{"prompt": "   "}], "empty"),
        ([{"messages": [{"role": "robot", "content": "x"}]}], "unknown role"),
        ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}], "last message"),
        ([42], "row 1 is a int"),
        ({"prompt": "x"}, "single dict"),
        (None, "no dataset"),
        (3.5, "cannot read"),
    ],
)
def test_bad_rows_name_the_row(source, needle):
    with pytest.raises(DatasetError) as info:
        load_dataset(source)
    assert needle in str(info.value)


def test_bad_json_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    with pytest.raises(DatasetError, match="line 2"):
        load_dataset(path)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError, match="no rows"):
        load_dataset(empty)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "d.xlsx"
    path.write_text("x")
    with pytest.raises(DatasetError, match="unsupported"):
        load_dataset(path)


def test_callable_that_raises():
    def broken():
        raise RuntimeError("boom")

    with pytest.raises(DatasetError, match="boom"):
        load_dataset(broken)


def test_split_is_deterministic_seeded_and_stable():
    prompts = load_dataset(rows(50))
    first = {p.hash for p in split(prompts, 0.2, seed=1) if p.split == "heldout"}
    again = {p.hash for p in split(load_dataset(rows(50)), 0.2, seed=1) if p.split == "heldout"}
    other = {p.hash for p in split(load_dataset(rows(50)), 0.2, seed=2) if p.split == "heldout"}
    assert len(first) == 10 and first == again and first != other


def test_split_keeps_one_on_each_side_for_small_sets():
    two = split(load_dataset(rows(2)), 0.1)
    assert sorted(p.split for p in two) == ["heldout", "train"]
    assert all(p.split == "train" for p in split(load_dataset(rows(5)), 0.0))
    with pytest.raises(DatasetError):
        split(load_dataset(rows(5)), 1.0)
