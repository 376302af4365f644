from pathlib import Path

import optuna
import pytest
import yaml

from sft_tune.cli import main
from sft_tune.errors import InputError
from sft_tune.space import load_space, make_sampler, to_optuna, with_params

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
    space = ConditionalSpace(load_space(_space(tmp_path, params)))
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
