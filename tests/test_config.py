import pytest
import yaml

from sft_tune.errors import InputError
from sft_tune.runconfig import load_config, parse_config


def _base():
    return {"model": {"name_or_path": "m"}, "data": {"train": "train.csv"}}


def _problems(raw):
    with pytest.raises(InputError) as caught:
        parse_config(raw)
    return caught.value.problems


def test_minimal_config_gets_documented_defaults():
    config = parse_config(_base())
    assert config.phase1.mask_probability == 0.15
    assert config.model.task == "classification" and config.data.labelled_text_for_lm is True


def test_every_problem_is_reported_at_once_with_key_value_rule_and_fix():
    raw = _base()
    raw["phase1"] = {"alpha": -1, "learning_rate": 0, "mask_probabilty": 0.2}
    raw["phase2"] = {"epochs": "many"}
    raw["optimiser"] = {}
    problems = _problems(raw)
    where = {p.where for p in problems}
    assert where == {
        "phase1.alpha",
        "phase1.learning_rate",
        "phase1.mask_probabilty",
        "phase2.epochs",
        "optimiser",
    }
    typo = next(p for p in problems if p.where == "phase1.mask_probabilty")
    assert typo.rule == "unknown key" and "mask_probability" in typo.fix
    alpha = next(p for p in problems if p.where == "phase1.alpha")
    assert (
        alpha.value == -1
        and "greater than or equal to 0" in alpha.rule
        and "task loss" in alpha.fix
    )
    assert "optimizer" in next(p for p in problems if p.where == "optimiser").fix


def test_missing_required_keys_and_unknown_task():
    problems = _problems({"model": {"task": "summarise"}})
    where = {p.where: p for p in problems}
    assert set(where) == {"model.name_or_path", "model.task", "data"}
    assert "classification" in where["model.task"].rule


def test_bad_values_are_rejected():
    for section, key, value in [
        ("phase1", "mask_probability", 1.5),
        ("data", "validation_fraction", 0.7),
        ("data", "max_length", 2),
        ("optimizer", "warmup_ratio", -0.1),
        (None, "device", "tpu"),
    ]:
        raw = _base()
        if section:
            raw.setdefault(section, {})[key] = value
        else:
            raw[key] = value
        problems = _problems(raw)
        assert [p.where for p in problems] == [f"{section}.{key}" if section else key]
        assert problems[0].value == value


def test_load_config_resolves_paths_against_the_file(tmp_path):
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({**_base(), "output_dir": "out"}))
    config = load_config(tmp_path / "cfg.yaml")
    assert config.data.train == tmp_path / "train.csv" and config.output_dir == tmp_path / "out"


@pytest.mark.parametrize(
    "text, rule", [(None, "must exist"), ("a: [1,", "valid YAML"), ("- a\n- b\n", "mapping")]
)
def test_unreadable_config_files(tmp_path, text, rule):
    path = tmp_path / "cfg.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError) as caught:
        load_config(path)
    assert rule in caught.value.problems[0].rule


def test_task_sections_are_checked_by_their_task_with_the_schema_at_once():
    # data.ner is the NER task's section (NerOptions in tasks/ner.py): its typo and bad value are
    # reported with a schema problem elsewhere, under their full dotted keys.
    raw = _base()
    raw["model"]["task"] = "ner"
    raw["data"]["ner"] = {"tag_shceme": "IOB2", "label_subwords": "some"}
    raw["data"]["qa"] = {"n_best": 0}
    raw["phase1"] = {"alpha": -1}
    where = {p.where: p for p in _problems(raw)}
    assert set(where) == {
        "data.ner.tag_shceme",
        "data.ner.label_subwords",
        "data.qa.n_best",
        "phase1.alpha",
    }
    assert (
        where["data.ner.tag_shceme"].rule == "unknown key"
        and "tag_scheme" in where["data.ner.tag_shceme"].fix
    )
    assert where["data.qa.n_best"].value == 0 and "candidates" in where["data.qa.n_best"].fix


def test_task_sections_come_back_complete():
    raw = _base()
    raw["data"]["ner"] = {"tag_scheme": "BIOES"}
    config = parse_config(raw)
    assert config.data.task_sections["ner"] == {
        "tokens_column": "tokens",
        "tags_column": "tags",
        "document_column": "document",
        "tag_scheme": "BIOES",
        "label_subwords": "first",
    }
    assert (
        config.data.task_sections["qa"]["max_answer_length"] == 30
        and config.data.task_sections["generation"]["max_new_tokens"] == 32
    )
    assert (
        parse_config(config.model_dump(mode="json")) == config
    )  # a saved config reads back the same


@pytest.mark.parametrize(
    "task, problem", [("ner", True), ("qa", True), ("classification", False), ("generation", False)]
)
def test_the_window_rule_is_the_windowed_tasks_own(task, problem):
    raw = _base()
    raw["model"]["task"] = task
    raw["data"].update(max_length=16, stride=8)
    if problem:
        assert [p.where for p in _problems(raw)] == ["data.stride"]
    else:
        parse_config(raw)


def test_config_schema_imports_no_task():
    import subprocess
    import sys

    code = (
        "import sys, sft_tune.config; print(sorted(m for m in sys.modules if "
        "m.startswith('sft_tune.tasks')))"
    )
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "[]"
    )


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_refused(tmp_path, value):
    # `.inf` trained both phases with loss=inf and exported a model.
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"model: {{name_or_path: m}}\ndata: {{train: t.csv}}\nphase1: {{alpha: {value}}}\n"
    )
    with pytest.raises(InputError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.where == "phase1.alpha" and "finite" in problem.rule


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "model: {name_or_path: m}\ndata: {train: t.csv}\nphase1:\n  steps: 3\nphase1:\n  alpha: 2\n"
    )
    with pytest.raises(InputError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.where == f"{path} line 5, column 1" and problem.value == "phase1:"
    assert "'phase1' is given twice (first on line 3)" in problem.rule


def test_a_yaml_syntax_error_shows_the_line(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: {name_or_path: m}\ndata: [train\n")
    with pytest.raises(InputError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.where.startswith(f"{path} line ") and problem.value != "(unparsable YAML)"


def test_a_config_that_is_not_utf8_names_the_byte(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes("model: {name_or_path: m}\n# café\n".encode("latin-1"))
    with pytest.raises(InputError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert problem.where == f"{path} line 2" and problem.value == "byte 0xe9 at offset 30"
    assert "UTF-8" in problem.rule
