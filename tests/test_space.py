from pathlib import Path

import optuna
import pytest
import yaml

from sft_tune.cli import main
from sft_tune.errors import InputError
from sft_tune.runconfig import with_params
from sft_tune.sweep.checks import load_space
from sft_tune.sweep.strategy import make_sampler, to_optuna

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(
    p for folder in ("search_spaces", "launch", "examples") for p in (ROOT / folder).rglob("*.y*ml")
)


def _space(tmp_path, params=None, search=None, **top):
    raw = {
        "config": {"model": {"name_or_path": "m"}, "data": {"train": "train.csv"}},
        "params": params
        if params is not None
        else {"phase1.alpha": {"type": "float", "low": 0, "high": 2}},
        "search": search or {},
        **top,
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _problems(path):
    with pytest.raises(InputError) as caught:
        load_space(path)
    return {p.where: p for p in caught.value.problems}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_yaml_loads(path):
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict)
    if "params" in raw:  # a search space: it must parse and check (paths may point to demo data)
        sweep = load_space(path)
        assert sweep.params and to_optuna(sweep.params)


def test_alpha_space_searches_alpha_both_lrs_and_both_lengths():
    sweep = load_space(ROOT / "search_spaces" / "alpha.yaml")
    assert {
        "phase1.alpha",
        "phase1.learning_rate",
        "phase2.learning_rate",
        "phase1.steps",
        "phase2.epochs",
    } <= set(sweep.params)
    assert sweep.search.sampler == "tpe" and sweep.search.scheduler == "asha"
    # "no phase 1" and alpha = 0 are in the space, and a plain fine-tune runs first
    assert sweep.params["phase1.steps"].low == 0 and sweep.params["phase1.alpha"].low == 0
    assert sweep.search.initial_points[0]["phase1.steps"] == 0


def test_optuna_translation(tmp_path):
    params = {
        "phase1.alpha": {"type": "float", "low": 0, "high": 4, "step": 0.5},
        "phase1.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "phase2.epochs": {"type": "int", "low": 1, "high": 5},
        "phase1.steps": {"type": "categorical", "choices": [0, 100, 200]},
    }
    dists = to_optuna(load_space(_space(tmp_path, params)).params)
    assert dists["phase1.alpha"] == optuna.distributions.FloatDistribution(0, 4, step=0.5)
    assert dists["phase1.learning_rate"].log and isinstance(
        dists["phase2.epochs"], optuna.distributions.IntDistribution
    )
    assert dists["phase1.steps"].choices == (0, 100, 200)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("tpe", "TPESampler"),
        ("random", "RandomSampler"),
        ("grid", "GridSampler"),
        ("cmaes", "CmaEsSampler"),
        ("qmc", "QMCSampler"),
        ("RandomSampler", "RandomSampler"),
    ],
)
def test_samplers_by_name(tmp_path, name, cls):
    params = {"phase1.alpha": {"type": "float", "low": 0, "high": 2, "step": 1}}
    sampler = make_sampler(load_space(_space(tmp_path, params, {"sampler": name})))
    assert type(sampler).__name__ == cls


def test_bad_space_reports_every_problem(tmp_path):
    params = {
        "phase1.alpha": {"type": "float", "low": 2, "high": 1},
        "phase1.learning_rate": {"type": "float", "low": 0, "high": 1e-3, "log": True},
        "phase1.alfa": {"type": "float", "low": 0, "high": 1},
        "phase2.epochs": {"type": "int", "low": -3, "high": 2},
        "phase1.steps": {"type": "categorical"},
        "phase1": {"type": "int", "low": 1, "high": 2},
    }
    search = {
        "sampler": "annealing",
        "scheduler": "hyperband",
        "folds": 0,
        "metric": "bleu",
        "num_trial": 3,
    }
    problems = _problems(_space(tmp_path, params, search))
    # Shape errors come first (pydantic); the field-level ones after them, in a second load.
    assert {
        "params.phase1.alpha",
        "params.phase1.learning_rate",
        "params.phase1.steps",
        "search.scheduler",
        "search.folds",
        "search.num_trial",
    } <= set(problems)
    assert "low <= high" in problems["params.phase1.alpha"].rule
    assert "did you mean `num_trials`" in problems["search.num_trial"].fix

    params = {
        "phase1.alfa": {"type": "float", "low": 0, "high": 1},
        "phase2.epochs": {"type": "int", "low": -3, "high": 2},
        "phase1": {"type": "int", "low": 1, "high": 2},
    }
    problems = _problems(_space(tmp_path, params, {"sampler": "annealing", "metric": "bleu"}))
    assert set(problems) == {
        "params.phase1.alfa",
        "params.phase2.epochs",
        "params.phase1",
        "search.sampler",
        "search.metric",
    }
    assert "alpha" in problems["params.phase1.alfa"].fix
    assert problems["params.phase2.epochs"].value == -3
    assert "tpe" in problems["search.sampler"].rule and "macro_f1" in problems["search.metric"].rule


def test_base_config_problems_and_base_xor_config(tmp_path):
    problems = _problems(
        _space(
            tmp_path,
            config={
                "model": {"name_or_path": "m"},
                "data": {"train": "t.csv"},
                "phase1": {"alpah": 1},
            },
        )
    )
    assert "base config phase1.alpah" in problems
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump({"base": "x.yaml", "config": {"model": {}}, "params": {}}))
    assert "base / config" in _problems(path)


def test_grid_needs_a_finite_grid(tmp_path):
    problems = _problems(_space(tmp_path, search={"sampler": "grid"}))
    assert "finite grid" in problems["params.phase1.alpha"].rule


def test_with_params_sets_dotted_paths():
    base = {"phase1": {"alpha": 1.0}, "seed": 1}
    assert with_params(base, {"phase1.alpha": 2.0, "phase2.epochs": 3}) == {
        "phase1": {"alpha": 2.0},
        "seed": 1,
        "phase2": {"epochs": 3},
    }
    assert base["phase1"]["alpha"] == 1.0


def test_cli_bad_space_exits_2_before_ray_starts(tmp_path, capsys):
    import ray

    code = main(
        [
            "search",
            "--space",
            str(_space(tmp_path, {"phase1.alpha": {"type": "float", "low": 3, "high": 1}})),
        ]
    )
    assert code == 2 and "low <= high" in capsys.readouterr().err
    assert not ray.is_initialized()
    assert main(["search"]) == 2
    assert main(["search", "--resume", str(tmp_path / "nothing")]) == 2
    assert "sweep folder" in capsys.readouterr().err


def test_one_fold_is_a_holdout_of_the_validation_fraction(tmp_path):
    problems = _problems(
        _space(
            tmp_path,
            search={"folds": 1},
            config={
                "model": {"name_or_path": "m"},
                "data": {"train": "train.csv", "validation_fraction": 0.0},
            },
        )
    )
    assert "data.validation_fraction" in problems["search.folds"].fix
    sweep = load_space(
        _space(tmp_path, search={"folds": 1})
    )  # the default validation_fraction (0.1)
    assert sweep.search.folds == 1


def test_initial_points_cover_both_arms_and_plain_points_drop_phase1_only_values(tmp_path):
    from sft_tune.sweep.searcher import initial_points

    params = {
        "phase1.alpha": {"type": "float", "low": 0, "high": 2},
        "phase1.steps": {"type": "int", "low": 0, "high": 30, "step": 10},
        "phase2.epochs": {"type": "int", "low": 1, "high": 3},
    }
    sweep = load_space(_space(tmp_path, params))
    assert sweep.arms() == {"plain", "two-phase"}
    assert initial_points(sweep) == [
        {"phase1.steps": 0},
        {"phase1.steps": 20},
    ]  # one of each arm first
    given = load_space(
        _space(
            tmp_path,
            params,
            {"initial_points": [{"phase1.steps": 0, "phase1.alpha": 1.0, "phase2.epochs": 2}]},
        )
    )
    assert initial_points(given) == [{"phase1.steps": 0, "phase2.epochs": 2}, {"phase1.steps": 20}]
    one_arm = load_space(
        _space(tmp_path, {"phase1.alpha": {"type": "float", "low": 0, "high": 2}})
    )  # steps fixed at the default 200
    assert one_arm.arms() == {"two-phase"} and initial_points(one_arm) == []


def test_the_searched_space_samples_phase1_only_parameters_only_when_phase1_runs(tmp_path):
    from sft_tune.sweep.searcher import ConditionalSpace

    params = {
        "phase1.alpha": {"type": "float", "low": 0, "high": 2},
        "phase1.steps": {"type": "categorical", "choices": [0, 10]},
        "data.labelled_text_for_lm": {"type": "categorical", "choices": [True, False]},
        "phase2.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
    }
    config = {"model": {"name_or_path": "m"}, "data": {"train": "t.csv", "unlabelled": ["u.csv"]}}
    space = ConditionalSpace(load_space(_space(tmp_path, params, config=config)))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: space(trial) or 0.0, n_trials=20)
    for trial in study.trials:
        expected = {"phase1.steps", "phase2.learning_rate"} | (
            {"phase1.alpha", "data.labelled_text_for_lm"} if trial.params["phase1.steps"] else set()
        )
        assert set(trial.params) == expected
    assert {t.params["phase1.steps"] for t in study.trials} == {0, 10}


@pytest.mark.parametrize("name", [".", "..", "a/b", "../up", "", "na me"])
def test_a_sweep_name_is_one_safe_path_component(tmp_path, name):
    # `..` made the sweep folder the parent of storage_path.
    problem = _problems(_space(tmp_path, search={"name": name}))["search.name"]
    assert problem.value == name and "one safe path component" in problem.rule


@pytest.mark.parametrize("name", ["sweep", "tweets-v2.1", "a_b", "..x", "x.."])
def test_ordinary_sweep_names_are_accepted(tmp_path, name):
    assert load_space(_space(tmp_path, search={"name": name})).search.name == name


def test_a_non_finite_bound_is_refused(tmp_path):
    problems = _problems(
        _space(tmp_path, params={"phase1.alpha": {"type": "float", "low": 0, "high": float("inf")}})
    )
    assert any(where.startswith("params") and "finite" in p.rule for where, p in problems.items())


@pytest.mark.parametrize(
    "metric, mode", [("loss", "min"), ("macro_f1", "max"), ("accuracy", "max")]
)
def test_mode_defaults_to_the_metric_s_own_direction(tmp_path, metric, mode):
    assert load_space(_space(tmp_path, search={"metric": metric})).search.mode == mode


def test_a_mode_against_the_metric_is_refused_with_the_fix(tmp_path):
    problem = _problems(_space(tmp_path, search={"metric": "loss", "mode": "max"}))["search.mode"]
    assert problem.value == "max" and "lower loss is better" in problem.rule
    assert "search.mode: min" in problem.fix


def _leaf_fields(model, prefix=""):
    """Every scalar field of a pydantic model, by dotted path (nested models followed)."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from _leaf_fields(kind, f"{prefix}{name}.")
        elif name != "task_sections":  # a task's section: its fields are added per task
            yield f"{prefix}{name}"


def test_every_run_config_field_is_either_honoured_per_trial_or_refused_with_a_reason():
    """A field nobody classified would be silently ignored by a trial (or silently honoured):
    each one is in the table of what a trial honours, or refused with its own reason."""
    from sft_tune.config import RunConfig
    from sft_tune.sweep.space import NOT_SEARCHABLE, searched_by
    from sft_tune.tasks import TASKS

    for task, files in TASKS.items():
        fields = list(_leaf_fields(RunConfig))
        if files.options is not None:
            fields += [f"data.{files.options.section}.{f}" for f in files.options.model_fields]
        for dotted in fields:
            kind, refused = searched_by(dotted, task)
            assert (kind is None) != (refused is None), dotted
            assert refused is None or "does not know" not in refused, dotted
    assert set(NOT_SEARCHABLE) <= set(_leaf_fields(RunConfig))


@pytest.mark.parametrize(
    "dotted, choices, reason",
    [
        ("data.train", ["a.csv", "b.csv"], "cannot be compared"),
        ("model.task", ["classification", "ner"], "one sweep searches one task"),
        ("output_dir", ["a", "b"], "changes nothing a fold scores"),
        ("data.text_column", ["text", "body"], "another reading of the same files"),
        ("data.ner.tags_column", ["tags", "labels"], "decides how the files are read"),
    ],
)
def test_a_field_no_trial_would_honour_is_refused_with_the_reason(
    tmp_path, dotted, choices, reason
):
    config = {"model": {"name_or_path": "m", "task": "ner"}, "data": {"train": "t.conll"}}
    params = {dotted: {"type": "categorical", "choices": choices}}
    problem = _problems(_space(tmp_path, params, config=config))[f"params.{dotted}"]
    assert f"{dotted} cannot be searched" in problem.rule and reason in problem.rule
    assert "overrides" in problem.fix


def test_what_a_trial_honours_is_accepted_and_the_sweep_knows_which_fields_reencode(tmp_path):
    config = {
        "model": {"name_or_path": "m", "task": "ner"},
        "data": {"train": "t.conll", "unlabelled": ["u.txt"]},
    }
    params = {"data.max_length": {"type": "categorical", "choices": [16, 64]}}
    # The windows' overlap (data.stride 32) must stay below half of each searched length.
    problem = _problems(_space(tmp_path, params, config=config))["params.data.max_length"]
    assert problem.value == 16 and "with data.max_length = 16, data.stride" in problem.rule
    config["data"]["stride"] = 4
    params = {
        "data.max_length": {"type": "categorical", "choices": [16, 64]},
        "data.ner.label_subwords": {"type": "categorical", "choices": ["first", "all"]},
        "phase1.alpha": {"type": "float", "low": 0, "high": 2},
        "model.lm_objective": {"type": "categorical", "choices": ["auto", "masked"]},
    }
    sweep = load_space(_space(tmp_path, params, config=config))
    assert sweep.reencoding_params() == ["data.max_length", "data.ner.label_subwords"]
    assert sweep.reencodes() and sweep.checkpoint_configs() == []


def test_the_validation_fraction_of_a_one_fold_search_is_refused(tmp_path):
    params = {"data.validation_fraction": {"type": "float", "low": 0.1, "high": 0.3}}
    problem = _problems(_space(tmp_path, params, search={"folds": 1}))[
        "params.data.validation_fraction"
    ]
    assert "holdout split every trial is scored on" in problem.rule
    assert load_space(_space(tmp_path, params, search={"folds": 3}))  # the inner split: honoured


def test_a_two_phase_trial_without_lm_text_is_refused_up_front(tmp_path):
    """No unlabelled file, and data.labelled_text_for_lm searched with false: that two-phase
    trial would have no LM text at all (it looped forever in endless_batches)."""
    params = {
        "data.labelled_text_for_lm": {"type": "categorical", "choices": [True, False]},
        "phase1.steps": {"type": "categorical", "choices": [0, 10]},
    }
    problem = _problems(_space(tmp_path, params))["params.data.labelled_text_for_lm"]
    assert "no LM text for phase 1" in problem.rule and "data.unlabelled" in problem.fix
    params["phase1.steps"] = {"type": "categorical", "choices": [0]}
    assert load_space(_space(tmp_path, params))  # no trial runs phase 1


def test_searched_checkpoints_are_judged_like_the_base_config_s_and_resolved(tmp_path, tiny_bert):
    import shutil

    shutil.copytree(tiny_bert, tmp_path / "local-bert")
    config = {"model": {"name_or_path": str(tiny_bert)}, "data": {"train": "train.csv"}}
    (tmp_path / "train.csv").write_text("text,label\na,b\n")
    params = {
        "model.name_or_path": {
            "type": "categorical",
            "choices": [str(tiny_bert), "local-bert", "./no-such-model"],
        }
    }
    path = _space(tmp_path, params, config=config)
    with pytest.raises(InputError) as caught:
        load_space(path, check_inputs=True)
    (problem,) = caught.value.problems
    assert problem.where.startswith("params.model.name_or_path choice './no-such-model'")
    params["model.name_or_path"]["choices"].pop()
    sweep = load_space(_space(tmp_path, params, config=config), check_inputs=True)
    assert sweep.params["model.name_or_path"].choices == [
        str(tiny_bert),
        str((tmp_path / "local-bert").resolve()),
    ]
    assert [c.model.name_or_path for c in sweep.checkpoint_configs()] == sweep.params[
        "model.name_or_path"
    ].choices


def test_readme_lists_every_searchable_and_refused_field():
    """docs/search.md's Searchable fields table says what each field costs; it must name every
    field of the tables `space.searched_by` reads, and every task's encoding options."""
    from sft_tune.sweep.space import NOT_SEARCHABLE, SEARCHED_BY
    from sft_tune.tasks import TASKS

    readme = (ROOT / "docs" / "search.md").read_text()
    section = readme[readme.index("### Searchable fields") : readme.index("How it runs:")]
    for key in SEARCHED_BY:
        assert f"`{key}*`" in section or f"`{key}`" in section, key
    for key in NOT_SEARCHABLE:
        assert f"`{key}`" in section or (key.endswith("_column") and "`data.*_column`" in section)
    for files in TASKS.values():
        for field in files.options.encoding_fields if files.options else ():
            assert f"`data.{files.options.section}.{field}`" in section


def test_the_scheduler_names_the_schema_takes_are_the_registry_s():
    """`search.scheduler` is a Literal in the schema (checked before Ray imports) and a registry
    of builders in strategy.py: the two name the same schedulers."""
    import typing

    from sft_tune.sweep.space import SearchSettings
    from sft_tune.sweep.strategy import SCHEDULERS

    names = typing.get_args(SearchSettings.model_fields["scheduler"].annotation)
    assert set(names) == set(SCHEDULERS)
