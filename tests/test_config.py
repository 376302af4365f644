import pytest
import yaml

from sft_tune.config import load_config, parse_config
from sft_tune.errors import InputError


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
    assert where == {"phase1.alpha", "phase1.learning_rate", "phase1.mask_probabilty", "phase2.epochs", "optimiser"}
    typo = next(p for p in problems if p.where == "phase1.mask_probabilty")
    assert typo.rule == "unknown key" and "mask_probability" in typo.fix
    alpha = next(p for p in problems if p.where == "phase1.alpha")
    assert alpha.value == -1 and "greater than or equal to 0" in alpha.rule and "task loss" in alpha.fix
    assert "optimizer" in next(p for p in problems if p.where == "optimiser").fix


def test_missing_required_keys_and_unknown_task():
    problems = _problems({"model": {"task": "summarise"}})
    where = {p.where: p for p in problems}
    assert set(where) == {"model.name_or_path", "model.task", "data"}
    assert "classification" in where["model.task"].rule


def test_bad_values_are_rejected():
    for section, key, value in [("phase1", "mask_probability", 1.5), ("data", "validation_fraction", 0.7), ("data", "max_length", 2), ("optimizer", "warmup_ratio", -0.1), (None, "device", "tpu")]:
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


@pytest.mark.parametrize("text, rule", [(None, "must exist"), ("a: [1,", "valid YAML"), ("- a\n- b\n", "mapping")])
def test_unreadable_config_files(tmp_path, text, rule):
    path = tmp_path / "cfg.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError) as caught:
        load_config(path)
    assert rule in caught.value.problems[0].rule
