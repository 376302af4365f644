import datasets
import pytest
from conftest import run_config_dict, toy_rows, write_csv, write_jsonl

from sft_tune.core.files import read_data
from sft_tune.core.splits import split_validation
from sft_tune.errors import InputError
from sft_tune.runconfig import parse_config
from sft_tune.tasks import get_task

TASK = get_task("classification")


def _read(model, files, out, **overrides):
    return read_data(parse_config(run_config_dict(model, files, out, **overrides)), TASK)


def _error(model, files, out, **overrides):
    with pytest.raises(InputError) as caught:
        _read(model, files, out, **overrides)
    return caught.value


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "folder"])
def test_every_format_reads_the_same(fmt, tmp_path, toy_files):
    rows = toy_rows(20, seed=5)
    if fmt == "csv":
        path = write_csv(tmp_path / "t.csv", rows)
    elif fmt == "jsonl":
        path = write_jsonl(tmp_path / "t.jsonl", rows)
    elif fmt == "parquet":
        path = tmp_path / "t.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        path = tmp_path / "saved"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    raw = _read("m", {**toy_files, "train": path}, tmp_path / "out")
    assert raw.train.texts == [r["text"] for r in rows]
    assert raw.label_names == ["negative", "positive"] and len(raw.unlabelled) == 120


def test_missing_file(tmp_path, toy_files):
    err = _error("m", {**toy_files, "test": tmp_path / "nope.csv"}, tmp_path)
    assert "nope.csv" in err.problems[0].where and "must exist" in err.problems[0].rule


def test_missing_column(tmp_path, toy_files):
    path = write_csv(tmp_path / "t.csv", [{"sentence": "a", "label": "x"}])
    err = _error("m", {**toy_files, "train": path}, tmp_path)
    problem = err.problems[0]
    assert "'text'" in problem.where and "sentence" in problem.fix


def test_empty_file(tmp_path, toy_files):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    err = _error("m", {**toy_files, "unlabelled": path}, tmp_path)
    assert "empty.jsonl" in err.problems[0].where


def test_header_only_csv_is_empty(tmp_path, toy_files):
    path = tmp_path / "head.csv"
    path.write_text("text,label\n")
    err = _error("m", {**toy_files, "train": path}, tmp_path)
    assert "not be empty" in err.problems[0].rule


def test_labels_outside_the_label_set(tmp_path, toy_files):
    path = write_csv(
        tmp_path / "test.csv", toy_rows(4, seed=1) + [{"text": "the car", "label": "angry"}]
    )
    err = _error("m", {**toy_files, "test": path}, tmp_path)
    assert err.problems[0].value == {"angry": 1} and "data.labels" in err.problems[0].fix
    err = _error("m", toy_files, tmp_path, data={"labels": ["negative", "neutral"]})
    assert err.problems[0].value == {"positive": 80}


def test_non_text_values(tmp_path, toy_files):
    path = write_jsonl(
        tmp_path / "t.jsonl", [{"text": "fine", "label": "a"}, {"text": 3, "label": "b"}]
    )
    err = _error("m", {**toy_files, "train": path}, tmp_path)
    assert "row 2" in err.problems[0].where


def test_empty_text_values(tmp_path, toy_files):
    path = write_csv(
        tmp_path / "t.csv", [{"text": "fine", "label": "a"}, {"text": "", "label": "b"}]
    )
    err = _error("m", {**toy_files, "train": path}, tmp_path)
    assert "row 2" in err.problems[0].where


def test_class_with_too_few_examples_for_the_split(tmp_path):
    with pytest.raises(InputError) as caught:
        split_validation(["a"] * 10 + ["b"], None, 0.2, seed=0, path=tmp_path / "t.csv")
    assert (
        caught.value.problems[0].value == {"b": 1} and "at least 2" in caught.value.problems[0].rule
    )
    train, held = split_validation(
        ["a"] * 10 + ["b"] * 10, None, 0.2, seed=0, path=tmp_path / "t.csv"
    )
    assert len(held) == 4 and not set(train) & set(held)


def test_phase_one_needs_lm_text(tmp_path, toy_files):
    err = _error("m", toy_files, tmp_path, data={"unlabelled": [], "labelled_text_for_lm": False})
    assert err.problems[0].where == "phase1.steps"


def test_unsupported_extension(tmp_path, toy_files):
    path = tmp_path / "t.xlsx"
    path.write_text("x")
    err = _error("m", {**toy_files, "train": path}, tmp_path)
    assert ".xlsx" in str(err.problems[0].value)


@pytest.mark.parametrize(
    "name, content, where, value, rule",
    [
        ("empty.csv", b"", "empty.csv", "0 bytes of data", "must not be empty"),
        (
            "latin.csv",
            "text,label\ncafé,good\n".encode("latin-1"),
            "latin.csv line 2",
            "byte 0xe9 at offset 14",
            "must be UTF-8",
        ),
        (
            "bad.jsonl",
            b'{"text": "a", "label": "b"}\n{"text": "c" "label": "d"}\n',
            "bad.jsonl line 2",
            '{"text": "c" "label": "d"}',
            "Expecting ',' delimiter",
        ),
        (
            "ragged.csv",
            b"text,label\na,b\nc,d,e\n",
            "ragged.csv row 3",
            ["c", "d", "e"],
            "row 3 has 3 fields, the header has 2",
        ),
    ],
)
def test_unreadable_files_say_which_line_and_what_is_there(
    tmp_path, tiny_bert, toy_files, name, content, where, value, rule
):
    # `datasets` said only "An error occurred while generating the dataset" for each of these.
    path = tmp_path / name
    path.write_bytes(content)
    error = _error(tiny_bert, {**toy_files, "train": path}, tmp_path / "out")
    [problem] = error.problems
    assert problem.where.endswith(where) and problem.value == value and rule in problem.rule


CHINESE = [
    "李岚清在全国教育工作会议上讲话",
    "北京大学的学生参观了上海博物馆",
    "这家餐厅的服务很好，菜也好吃",
    "昨天的天气很冷，我们没有出门",
]


def _chinese_config(model, tmp_path, **data):
    rows = [{"text": text, "label": label} for text in CHINESE for label in ("good", "bad")]
    files = {
        "train": write_csv(tmp_path / "zh.csv", rows * 3),
        "test": write_csv(tmp_path / "zh-test.csv", rows),
        "unlabelled": write_jsonl(tmp_path / "u.jsonl", [{"text": t} for t in CHINESE]),
    }
    return parse_config(run_config_dict(model, files, tmp_path / "out", data=data))


def test_a_model_that_cannot_read_the_language_stops_before_it_loads(tiny_bert, tmp_path):
    # The tiny BERT's vocabulary is English words and a-z: every Chinese character is [UNK].
    # prepare_data runs before any model loads (train, every sweep, select).
    from sft_tune.core import prepare

    config = _chinese_config(tiny_bert, tmp_path)
    with pytest.raises(InputError) as caught:
        prepare.prepare_data(config, TASK)
    (problem, *more) = caught.value.problems
    assert problem.where == "model.name_or_path" and problem.value == str(tiny_bert)
    assert "100.0% of the tokens of the labelled texts are unknown" in problem.rule
    assert "'的' (" in problem.rule and "data.max_unknown_fraction 0.05" in problem.rule
    assert "raise data.max_unknown_fraction" in problem.fix
    assert more and "unlabelled texts" in more[0].rule  # the unlabelled sample, too


def test_the_unknown_share_is_measured_in_every_run(tiny_bert, tmp_path, toy_files, caplog):
    from sft_tune.core.prepare import prepare_data

    config = _chinese_config(tiny_bert, tmp_path, max_unknown_fraction=1.0)
    with caplog.at_level("INFO"):
        assert prepare_data(config, TASK).coverage == {"labelled": 1.0, "unlabelled": 1.0}
    assert (
        "tokenizer coverage: 100.00% of the tokens of the labelled texts are unknown" in caplog.text
    )
    english = parse_config(run_config_dict(tiny_bert, toy_files, tmp_path / "en"))
    assert prepare_data(english, TASK).coverage == {"labelled": 0.0, "unlabelled": 0.0}
