"""Reading data files in one pass (core/files.py): every layout of the supported formats, the
problems each bad file reports, and a config's files reported all at once."""

import json

import pytest
from conftest import run_config_dict, toy_rows, write_csv, write_jsonl

from sft_tune.core.files import data_names, read_data, read_table
from sft_tune.errors import InputError
from sft_tune.runconfig import parse_config
from sft_tune.tasks import task_files


def _problems(path, what="labelled training file"):
    with pytest.raises(InputError) as caught:
        read_table(path, what)
    return str(caught.value)


def test_a_csv_keeps_its_text_as_written(tmp_path):
    # Python's csv reader: numbers stay text, a quoted field keeps its comma and newline, a BOM
    # is dropped, blank lines are skipped.
    path = tmp_path / "t.csv"
    path.write_bytes('\ufefftext,label\n"one, two\nthree",1\n\n007,0\n'.encode())
    table = read_table(path, "file")
    assert table.column_names == ["text", "label"]
    assert table["text"] == ["one, two\nthree", "007"] and table["label"] == ["1", "0"]


def test_json_layouts_read_the_same(tmp_path):
    rows = [{"text": "a b", "label": "x"}, {"text": "c", "label": "y"}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "columns.json").write_text(json.dumps({"text": ["a b", "c"], "label": ["x", "y"]}))
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in rows))
    write_jsonl(tmp_path / "lines.jsonl", rows)
    for name in ("rows.json", "columns.json", "lines.json", "lines.jsonl"):
        table = read_table(tmp_path / name, "file")
        assert table.columns == {"text": ["a b", "c"], "label": ["x", "y"]}, name


def test_json_lines_missing_a_key_read_as_null(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    assert read_table(path, "file")["label"] == ["x", None]


def test_tsv_and_parquet(tmp_path):
    import pyarrow
    import pyarrow.parquet

    (tmp_path / "t.tsv").write_text("text\tlabel\na, b\tx\n")
    assert read_table(tmp_path / "t.tsv", "file").columns == {"text": ["a, b"], "label": ["x"]}
    pyarrow.parquet.write_table(
        pyarrow.table({"tokens": [["a", "b"]], "tags": [["O", "B-X"]]}), tmp_path / "t.parquet"
    )
    table = read_table(tmp_path / "t.parquet", "file")
    assert table["tokens"] == [["a", "b"]] and table["tags"] == [["O", "B-X"]]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.csv", b"", "0 bytes of data"),
        ("latin.csv", "text,label\ncaf\xe9,x\n".encode("latin-1"), "byte 0xe9 at offset 14"),
        ("ragged.csv", b"text,label\na,x\nb,y,z\n", "row 3 has 3 fields, the header has 2"),
        ("twice.csv", b"text,text\na,b\n", "['text'] appear more than once"),
        ("header.csv", b"text,label\n", "0 rows"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": \n', "bad.jsonl line 2"),
        ("list.jsonl", b'{"text": "a"}\n[1, 2]\n', "one JSON object of columns"),
        ("number.json", b"42", "a JSON int"),
        ("uneven.json", b'{"text": ["a", "b"], "label": ["x"]}', "equal-length column lists"),
        ("t.parquet", b"not parquet", "must be readable as .parquet"),
        ("t.xlsx", b"PK", "must be one of"),
    ],
)
def test_each_unreadable_file_says_where_and_what(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    assert expected in _problems(path)


def test_a_broken_saved_dataset_folder_is_an_input_error(tmp_path):
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "state.json").write_text("{")
    assert "Dataset.save_to_disk" in _problems(tmp_path / "saved")
    (tmp_path / "saved" / "state.json").write_text('{"_data_files": [{"filename": "d.arrow"}]}')
    assert "missing ['d.arrow']" in _problems(tmp_path / "saved")


def test_every_bad_file_of_a_config_is_reported_at_once_by_its_key(tmp_path, toy_files):
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y,z\n")
    (tmp_path / "test.csv").write_text("words,label\na,x\n")
    (tmp_path / "u.jsonl").write_text('{"text": "a"}\n{oops}\n')
    raw = run_config_dict("m", toy_files, tmp_path / "out")
    raw["data"].update(train="train.csv", test="test.csv", unlabelled=["u.jsonl"])
    config = parse_config(raw, tmp_path)
    with pytest.raises(InputError) as caught:
        read_data(config, task_files("classification"), names=data_names(raw, tmp_path))
    text = str(caught.value)
    assert "invalid data (3 files)" in text
    assert "data.train (train.csv) row 3" in text
    assert "data.test (test.csv) column 'text'" in text and "set data.text_column" in text
    assert "data.unlabelled[0] (u.jsonl) line 2" in text
    assert str(tmp_path) not in text.split("Fix:")[0]  # named as written, not resolved


def test_the_same_rows_read_from_each_format_give_the_same_data(tmp_path, toy_files):
    rows = toy_rows(20, seed=5)
    raw = run_config_dict("m", toy_files, tmp_path / "out")
    raw["data"]["train"] = str(write_csv(tmp_path / "t.csv", rows))
    from_csv = read_data(parse_config(raw), task_files("classification"))
    raw["data"]["train"] = str(write_jsonl(tmp_path / "t.jsonl", rows))
    from_jsonl = read_data(parse_config(raw), task_files("classification"))
    assert from_csv.train.texts == from_jsonl.train.texts == [r["text"] for r in rows]
    assert from_csv.train.labels == from_jsonl.train.labels
