"""Extractive QA (task `qa`): SQuAD reading, windows, span decoding, SQuAD metrics, training,
prediction and a real search. Fixtures in tests/data/qa/ are hand-made in the real formats and
written with the tiny BERT's words (others become [UNK])."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, run_config_dict
from torch import nn
from transformers import AutoModelForQuestionAnswering, AutoTokenizer
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from sft_tune.config import DataConfig
from sft_tune.core import data as data_module
from sft_tune.errors import InputError
from sft_tune.runconfig import parse_config
from sft_tune.tasks import get_task
from sft_tune.tasks.qa.model import decode_answer, normalize_answer, question_scores, squad_scores

DATA = Path(__file__).parents[1] / "data" / "qa"
TASK = get_task("qa")


def _data(**overrides) -> DataConfig:
    return DataConfig(
        **{"train": DATA / "squad_v2.json", "max_length": 32, "stride": 8, **overrides}
    )


@pytest.fixture
def tokenizer(tiny_bert):
    return AutoTokenizer.from_pretrained(tiny_bert)


@pytest.fixture
def v2(tokenizer):
    data = _data()
    questions = TASK.read(DATA / "squad_v2.json", data, "labelled training file")
    return questions, TASK.encode(questions, tokenizer, TASK.label_names(questions, data), data)


# --- Reading -------------------------------------------------------------------------------


def test_reads_squad_v2_v1_and_tables():
    data = _data()
    v2 = TASK.read(DATA / "squad_v2.json", data, "train")
    assert len(v2) == 18 and v2.ids[:2] == ["bus-1", "bus-2"]
    assert TASK.strata(v2).count("unanswerable") == 6 and v2.answers[2] == []
    assert TASK.label_names(v2, data) == ["answer", "no_answer"]
    assert TASK.groups(v2)[0] == ("title", "Buses") and TASK.texts(v2)[0] == v2.contexts[0]

    v1 = TASK.read(DATA / "squad_v1.json", data, "test")
    assert v1.answers[0] == [("great", 14), ("great", 14), ("was great", 10)]
    assert TASK.label_names(v1, data) == ["answer"]  # no unanswerable question: no-answer is off
    assert TASK.label_names(v1, _data(qa={"no_answer": "true"})) == ["answer", "no_answer"]

    rows = TASK.read(DATA / "train.jsonl", data, "train")  # the HF `squad` layout
    assert len(rows) == 8 and rows.answers[0] == [("the bus", 0)] and rows.answers[2] == []
    assert rows.titles[0] == "Buses" and rows.ids[0] == "buses-1"
    listed = TASK.read(DATA / "answers_list.jsonl", data, "train")  # a list of {text, answer_start}
    assert listed.answers[1] == [("the bus", 0), ("bus", 4)]
    assert TASK.groups(listed) == [("context", c) for c in listed.contexts]  # no title: the context


def _squad(tmp_path, edit) -> Path:
    raw = json.loads((DATA / "squad_v1.json").read_text())
    edit(raw)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    return path


def _qas(raw, article=0):
    return raw["data"][article]["paragraphs"][0]["qas"]


BAD_SQUAD = {
    "answer_start off": (
        lambda raw: _qas(raw)[1]["answers"][0].update(answer_start=5),
        ["question 'drive-2'", "must equal the answer text", "[28]"],
    ),
    "answer past the end": (
        lambda raw: _qas(raw)[1]["answers"][0].update(answer_start=500),
        ["question 'drive-2'", "context length"],
    ),
    "text not in context": (
        lambda raw: _qas(raw)[1]["answers"][0].update(text="the bus"),
        ["question 'drive-2'", "does not occur"],
    ),
    "no answers key": (
        lambda raw: _qas(raw)[0].pop("answers"),
        ["question 'drive-1'", "'answers' must be a list"],
    ),
    "impossible with answers": (
        lambda raw: _qas(raw)[0].update(is_impossible=True),
        ["question 'drive-1'", "must have no answers"],
    ),
    "no question text": (
        lambda raw: _qas(raw)[0].update(question=" "),
        ["question 'drive-1'", "non-empty text"],
    ),
    "no context": (
        lambda raw: raw["data"][1]["paragraphs"][0].pop("context"),
        ["data[1].paragraphs[0]", "'context'"],
    ),
    "no paragraphs": (lambda raw: raw["data"][0].pop("paragraphs"), ["data[0]", "'paragraphs'"]),
    "not SQuAD": (lambda raw: raw.pop("data"), ["key 'data'", "SQuAD-shaped"]),
}


@pytest.mark.parametrize("case", list(BAD_SQUAD))
def test_bad_squad_files_name_the_file_the_question_and_the_fix(case, tmp_path):
    edit, expected = BAD_SQUAD[case]
    path = _squad(tmp_path, edit)
    with pytest.raises(InputError) as caught:
        TASK.read(path, _data(), "labelled training file")
    message = str(caught.value)
    assert str(path) in message and "Fix:" in message
    for part in expected:
        assert part in message


def test_shipped_bad_fixture_and_other_bad_inputs(tmp_path, tokenizer):
    with pytest.raises(
        InputError,
        match=r"bad_answer_start.json question 'ride-1'.*'context there': 'l and'.*\[51\]",
    ):
        TASK.read(DATA / "bad_answer_start.json", _data(), "train")
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(InputError, match="must not be empty"):
        TASK.read(empty, _data(), "train")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps(
            {
                "id": "q7",
                "question": "how ?",
                "context": "it was fine .",
                "answers": {"text": ["fine"], "answer_start": [3]},
            }
        )
        + "\n"
    )
    with pytest.raises(InputError, match=r"rows.jsonl row 1 \(id 'q7'\).*\[7\]"):
        TASK.read(rows, _data(), "train")
    with pytest.raises(InputError, match="must have a column 'answers'"):
        TASK.read(
            DATA / "unlabelled.jsonl",
            _data(qa={"question_column": "text", "context_column": "text"}),
            "train",
        )
    with pytest.raises(InputError, match="data.labels.*no label set"):
        TASK.label_names(
            TASK.read(DATA / "squad_v1.json", _data(), "train"), _data(labels=["a", "b"])
        )
    # A question that leaves no more context tokens per window than the stride (the tokenizer
    # would panic): named, with the fix.
    questions = TASK.read(DATA / "squad_v1.json", _data(), "train")
    with pytest.raises(
        InputError,
        match=r"squad_v1.json question 'drive-1'.*more than data.stride \(8\).*raise "
        r"data.max_length",
    ):
        TASK.encode(
            questions, tokenizer, ["answer"], _data(max_length=16, cache_dir=tmp_path / "c")
        )


# --- Windows -------------------------------------------------------------------------------


def test_answer_positions_decode_back_to_exactly_the_answer(v2):
    questions, windows = v2
    answered = 0
    for w in range(len(windows)):
        start, end = windows.start_positions[w], windows.end_positions[w]
        q = windows.example[w]
        if start == 0:
            assert end == 0
            continue
        answered += 1
        text, char = questions.answers[q][0]
        offsets = windows.offsets[w]
        assert 0 < start <= end and offsets[start] is not None and offsets[end] is not None
        assert questions.contexts[q][offsets[start][0] : offsets[end][1]] == text
        assert (offsets[start][0], offsets[end][1]) == (char, char + len(text))
    assert answered == 12  # every answerable question has exactly one window with its whole answer


def test_windows_cover_the_context_and_point_at_zero_without_the_answer(v2, tokenizer):
    questions, windows = v2
    assert json.loads(json.dumps(dataclasses.asdict(windows))) == dataclasses.asdict(windows)
    long_question = questions.ids.index(
        "bus-4"
    )  # "our city train ride" near the end of a long context
    mine = [w for w, q in enumerate(windows.example) if q == long_question]
    assert len(mine) >= 3 and all(len(windows.input_ids[w]) <= 32 for w in mine)
    context = questions.contexts[long_question]
    every = {
        tuple(span)
        for span in tokenizer(context, return_offsets_mapping=True, add_special_tokens=False)[
            "offset_mapping"
        ]
    }
    covered = {tuple(span) for w in mine for span in windows.offsets[w] if span is not None}
    assert covered == every
    assert [windows.start_positions[w] > 0 for w in mine] == [False] * (len(mine) - 1) + [True]
    first = windows.input_ids[mine[0]]
    assert (
        first[0] == tokenizer.cls_token_id and windows.offsets[mine[0]][0] is None
    )  # position 0 = [CLS]
    # Consecutive windows share `stride` context tokens.
    a, b = ([tuple(s) for s in windows.offsets[w] if s is not None] for w in mine[:2])
    assert a[-8:] == b[:8]
    assert all(
        windows.start_positions[w] == 0
        for w, q in enumerate(windows.example)
        if not questions.answers[q]
    )


def test_subset_takes_whole_questions_renumbered(v2, tokenizer):
    questions, windows = v2
    before = data_module.TOKENIZATION_PASSES
    again = TASK.encode(questions, tokenizer, ["answer", "no_answer"], _data())
    assert data_module.TOKENIZATION_PASSES == before and again == windows  # tokenized once (cached)
    long_question = questions.ids.index("bus-4")
    part = windows.subset([long_question, 0])
    assert part.example == [0] * (len(part) - 1) + [1]
    assert part.contexts == [questions.contexts[long_question], questions.contexts[0]]
    assert (
        part.golds == [["our city train ride"], ["the city bus"]]
        and part.settings == windows.settings
    )


def test_collate_pads_left_and_right_with_positions_on_the_same_tokens(v2, tokenizer):
    _, windows = v2
    indices = [0, 3, 6, 2]  # short, long no-answer, long with the answer, unanswerable
    pad = tokenizer.pad_token_id
    right = TASK.collate(windows, indices, pad, "right")
    left = TASK.collate(windows, indices, pad, "left")
    assert set(left) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "start_positions",
        "end_positions",
    }
    for row, w in enumerate(indices):
        n = len(windows.input_ids[w])
        shift = left["input_ids"].shape[1] - n
        assert left["start_positions"][row] == right["start_positions"][row] + shift
        assert left["end_positions"][row] == right["end_positions"][row] + shift
        for batch in (left, right):
            start, end = batch["start_positions"][row], batch["end_positions"][row]
            real = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
            assert real == windows.input_ids[w]
            assert (
                batch["input_ids"][row, start : end + 1].tolist()
                == windows.input_ids[w][windows.start_positions[w] : windows.end_positions[w] + 1]
            )
        assert left["token_type_ids"][row, shift:].tolist() == windows.token_type_ids[w]
        assert left["token_type_ids"][row, :shift].tolist() == [0] * shift
    assert left["input_ids"][0, 0] == pad and left["start_positions"][3] == left["input_ids"].shape[
        1
    ] - len(windows.input_ids[2])


# --- Decoding and metrics ------------------------------------------------------------------


CONTEXT = "the city bus was very good today"
#          0   4    9   13  17   22   27
SPANS = [[0, 3], [4, 8], [9, 12], [13, 16], [17, 21], [22, 26], [27, 32]]


def _window(tokens, start, end):
    """Logits of a window [CLS] q q <context tokens> [SEP] (context from position 3); start/end give
    {position: logit}, every other position gets -10."""
    offsets = [None, None, None] + [SPANS[t] for t in tokens] + [None]
    starts, ends = [-10.0] * len(offsets), [-10.0] * len(offsets)
    for position, value in start.items():
        starts[position] = value
    for position, value in end.items():
        ends[position] = value
    return (starts, ends), offsets


def test_best_span_is_stitched_across_windows_by_hand_computed_logits():
    # Window 1 holds tokens 0-3 ("the city bus was"), window 2 tokens 2-6 ("bus was very good
    # today"). Window 1: off-context positions 1 and 2 score 20 (never used); "bus was" = 4 + 3 = 7,
    # "the city bus was" = 2 + 3 = 5, "the city" = 2 + 1 = 3.
    w1, o1 = _window([0, 1, 2, 3], {1: 20.0, 3: 2.0, 5: 4.0}, {2: 20.0, 4: 1.0, 6: 3.0})
    # Window 2: "very" -> "was" (14) and "today" -> "was" (17) end before they start: invalid;
    # "bus was" = 1 + 8 = 9, "very good" = 6 + 2.5 = 8.5, "bus was very good" = 1 + 2.5 = 3.5.
    w2, o2 = _window([2, 3, 4, 5, 6], {3: 1.0, 5: 6.0, 7: 9.0}, {4: 8.0, 6: 2.5})
    answer = decode_answer(
        [w1, w2], [o1, o2], CONTEXT, max_answer_length=30, n_best=20, allow_no_answer=False
    )
    assert (answer.text, answer.start, answer.end, answer.score) == ("bus was", 9, 16, 9.0)
    assert CONTEXT[answer.start : answer.end] == answer.text
    ranked = [(c["answer"], c["score"]) for c in answer.candidates[:4]]
    assert ranked == [
        ("bus was", 9.0),
        ("very good", 8.5),
        ("the city bus was", 5.0),
        ("bus was very good", 3.5),
    ]
    assert [c["answer"] for c in answer.candidates].count(
        "bus was"
    ) == 1  # in both windows: the best kept
    # max_answer_length 1: single tokens only; the best is "today" = 9 - 10.
    assert (
        decode_answer([w1, w2], [o1, o2], CONTEXT, 1, 20, False).text,
        decode_answer([w1, w2], [o1, o2], CONTEXT, 1, 20, False).score,
    ) == ("today", -1.0)
    # n_best 1: window 1 pairs only its top start and end ("bus was", 7); window 2's top start
    # "today" and top end "was" make no valid span.
    top = decode_answer(
        [w1, w2], [o1, o2], CONTEXT, max_answer_length=30, n_best=1, allow_no_answer=False
    )
    assert (top.text, top.score) == ("bus was", 7.0) and len(top.candidates) == 1


def test_no_answer_wins_when_allowed_and_the_null_score_is_higher():
    # Null score = the minimum over windows of start[0] + end[0]: min(5 + 5, 4 + 5) = 9 > "the city"
    # 8.
    w1, o1 = _window([0, 1], {0: 5.0, 3: 4.0}, {0: 5.0, 4: 4.0})
    w2, o2 = _window([1, 2], {0: 4.0, 3: 1.0}, {0: 5.0, 4: 2.0})
    answer = decode_answer([w1, w2], [o1, o2], CONTEXT, 30, 20, allow_no_answer=True)
    assert (answer.text, answer.score, answer.start, answer.end) == ("", 9.0, None, None)
    assert answer.candidates[0] == {"answer": "", "score": 9.0, "start": None, "end": None}
    assert (answer.candidates[1]["answer"], answer.candidates[1]["score"]) == ("the city", 8.0)
    assert (
        decode_answer([w1, w2], [o1, o2], CONTEXT, 30, 20, allow_no_answer=False).text == "the city"
    )
    w3, o3 = _window(
        [0, 1], {0: 5.0, 3: 4.0}, {0: 5.0, 4: 6.0}
    )  # span 10 = null 10: the span stays
    assert decode_answer([w3], [o3], CONTEXT, 30, 20, allow_no_answer=True).text == "the city"


def test_squad_metrics_match_hand_computed_values():
    assert normalize_answer("The  Cat's, a HAT!") == "cats hat"
    assert (
        normalize_answer("an apple—the end") == "apple— end"
    )  # the official rules: ASCII punctuation only
    assert question_scores(["The cat."], "cat") == (1.0, 1.0)
    # gold [cat, sat], predicted [cat, sat, down]: precision 2/3, recall 1, F1 0.8; EM 0.
    assert question_scores(["the cat sat"], "cat sat down") == (0.0, pytest.approx(0.8))
    # Max over gold answers: F1 with "sat on mat" = 2 * (1/2 * 1/3) / (1/2 + 1/3) = 0.4.
    assert question_scores(["dog", "sat on mat"], "cat sat") == (0.0, pytest.approx(0.4))
    assert question_scores([], "") == (1.0, 1.0)  # unanswerable, predicted no-answer
    assert question_scores([], "the bus") == (0.0, 0.0)
    assert question_scores(["the bus"], "") == (0.0, 0.0)
    assert question_scores(["a"], "") == (
        1.0,
        1.0,
    )  # a gold that normalizes to nothing counts as no-answer
    scores = squad_scores(
        ["cat", "cat sat down", "", "x"],
        [["The cat."], ["the cat sat"], [], []],
        has_unanswerable=True,
    )
    assert scores == pytest.approx(
        {
            "exact_match": 2 / 4,
            "f1": (1 + 0.8 + 1 + 0) / 4,
            "has_answer_exact_match": 1 / 2,
            "has_answer_f1": 0.9,
            "no_answer_exact_match": 1 / 2,
            "no_answer_f1": 1 / 2,
        }
    )
    assert set(squad_scores(["cat"], [["cat"]], has_unanswerable=False)) == {"exact_match", "f1"}


class HappyModel(nn.Module):
    """A position-free QA model: the word "happy" gets start and end logit 5, [CLS] 0, others -5.
    Its answers do not depend on padding, so left and right padding must give the same scores."""

    def __init__(self, tokenizer):
        super().__init__()
        self.logits = nn.Embedding(len(tokenizer), 2)
        weights = torch.full((len(tokenizer), 2), -5.0)
        weights[tokenizer.convert_tokens_to_ids("happy")] = 5.0
        weights[tokenizer.cls_token_id] = 0.0
        self.logits.weight.data.copy_(weights)

    def forward(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        start_positions=None,
        end_positions=None,
    ):
        logits = self.logits(input_ids).masked_fill(~attention_mask.bool()[..., None], -1e4)
        start, end = logits.unbind(-1)
        loss = (
            nn.functional.cross_entropy(start, start_positions)
            + nn.functional.cross_entropy(end, end_positions)
        ) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end)


def test_evaluate_scores_hand_known_answers_with_left_and_right_padding(v2, tokenizer):
    questions, windows = v2
    model = HappyModel(tokenizer)
    batches = [list(range(i, min(i + 5, len(windows)))) for i in range(0, len(windows), 5)]
    right = TASK.evaluate(
        model, windows, batches, tokenizer.pad_token_id, "right", torch.device("cpu")
    )
    left = TASK.evaluate(
        model, windows, batches, tokenizer.pad_token_id, "left", torch.device("cpu")
    )
    assert left == pytest.approx(right)
    # "happy" is in two contexts: city-1 is answered right; bus-1, bus-2, bus-3, city-2 and city-3
    # get "happy" (wrong). Elsewhere the best span (-10) loses to the null score (0): the 4 other
    # unanswerable questions are right, their 8 answerable ones wrong.
    assert right["exact_match"] == pytest.approx(5 / 18) and right["f1"] == pytest.approx(5 / 18)
    assert right["has_answer_exact_match"] == pytest.approx(1 / 12) and right[
        "no_answer_f1"
    ] == pytest.approx(4 / 6)
    assert right["loss"] > 0 and set(right) <= set(TASK.metrics)


def test_a_decoder_trains_and_scores_with_left_padding(tiny_gpt2):
    # GPT-2: no [CLS] (position 0 is the question's first token), no token types, left padding.
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
    data = _data()
    questions = TASK.read(DATA / "squad_v2.json", data, "train")
    windows = TASK.encode(questions, tokenizer, ["answer", "no_answer"], data)
    # Byte-level BPE tokens carry the space before a word; offsets are trimmed so answers do not.
    answered = [w for w in range(len(windows)) if windows.start_positions[w]]
    for w in answered:
        offsets, q = windows.offsets[w], windows.example[w]
        assert (
            questions.contexts[q][
                offsets[windows.start_positions[w]][0] : offsets[windows.end_positions[w]][1]
            ]
            == questions.answers[q][0][0]
        )
    assert {windows.example[w] for w in answered} == {
        q for q, a in enumerate(questions.answers) if a
    }
    model = AutoModelForQuestionAnswering.from_pretrained(tiny_gpt2)
    model.config.pad_token_id = tokenizer.pad_token_id
    batch = TASK.collate(windows, list(range(8)), tokenizer.pad_token_id, "left")
    assert "token_type_ids" not in batch
    model(**batch).loss.backward()
    metrics = TASK.evaluate(
        model,
        windows,
        [list(range(i, min(i + 8, len(windows)))) for i in range(0, len(windows), 8)],
        tokenizer.pad_token_id,
        "left",
        torch.device("cpu"),
    )
    assert {"exact_match", "f1", "loss", "no_answer_f1"} <= set(metrics) and metrics[
        "loss"
    ] == metrics["loss"]


# --- Training, prediction, search ----------------------------------------------------------


def _qa_config(model, out, **overrides):
    files = {
        "train": DATA / "squad_v2.json",
        "test": DATA / "squad_v1.json",
        "unlabelled": DATA / "unlabelled.jsonl",
    }
    raw = run_config_dict(model, files, out, **overrides)
    raw["model"]["task"] = "qa"
    raw["data"].update(
        max_length=32, stride=8, validation_fraction=0.25
    )  # 5 articles: 4 group folds
    return parse_config(raw)


def test_train_end_to_end_then_predict_and_load_with_plain_transformers(tiny_bert, tmp_path):
    from sft_tune.predict import predict
    from sft_tune.run import train

    reports = []
    config = _qa_config(
        tiny_bert,
        tmp_path / "out",
        phase1={"steps": 4},
        phase2={"epochs": 12, "learning_rate": 3e-3},
    )
    metrics = train(config, report=lambda m, c: reports.append(m), progress=False)
    assert [(r["phase"], r["epoch"]) for r in reports] == [(1, 0)] + [(2, e) for e in range(1, 13)]
    assert {"exact_match", "f1", "loss", "has_answer_f1", "no_answer_f1"} <= set(reports[-1])
    assert set(metrics["test"]) == {"exact_match", "f1", "loss"} and 0 <= metrics["test"]["f1"] <= 1
    folder = tmp_path / "out" / "model"
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    phase2 = [h["task_loss"] for h in history if h["phase"] == 2]
    assert sum(phase2[-5:]) < sum(phase2[:5])  # the windows are learnable
    assert json.loads((folder / "run.json").read_text())["labels"] == ["answer", "no_answer"]

    model = AutoModelForQuestionAnswering.from_pretrained(folder)
    assert type(model).__name__ == "BertForQuestionAnswering"

    records = list(predict(folder, DATA / "squad_v2.json", batch_size=4))
    questions = TASK.read(DATA / "squad_v2.json", config.data, "x")
    assert [r["id"] for r in records] == questions.ids
    for record, context in zip(records, questions.contexts):
        assert {"id", "question", "answer", "score", "start", "end", "n_best"} <= set(record)
        assert isinstance(record["score"], float) and 1 <= len(record["n_best"]) <= 5
        assert record["n_best"][0]["score"] == record["score"]
        for candidate in [record] + record["n_best"]:
            if candidate["answer"]:
                assert context[candidate["start"] : candidate["end"]] == candidate["answer"]
            else:
                assert candidate["start"] is None and candidate["end"] is None
    # With no-answer switched off (a data setting, overridable like the columns) every answer is a
    # span.
    spans = list(predict(folder, DATA / "squad_v2.json", columns={"qa.no_answer": "false"}))
    assert all(
        r["answer"] and context[r["start"] : r["end"]] == r["answer"]
        for r, context in zip(spans, questions.contexts)
    )
    json.dumps(records)
    # A table of questions (no answers needed); question/context columns as configured or
    # overridden.
    table = tmp_path / "ask.jsonl"
    table.write_text(
        json.dumps({"q": "how was the bus ride ?", "context": questions.contexts[0]}) + "\n"
    )
    (only,) = predict(folder, table, columns={"qa.question_column": "q"})
    assert only["question"] == "how was the bus ride ?" and "id" not in only


def test_predict_checks_the_whole_input_before_returning(tiny_bert, tmp_path):
    model = AutoModelForQuestionAnswering.from_pretrained(tiny_bert)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"question": "how ?", "context": "fine ."})
        + "\n"
        + json.dumps({"question": "", "context": "bad ."})
        + "\n"
    )
    with pytest.raises(InputError, match=r"bad.jsonl row 2 column 'question'"):
        TASK.read_input(bad, _data())  # the input is read and checked before the model runs
    data = _data(qa={"no_answer": "false"})
    records = TASK.predict(model, tokenizer, TASK.read_input(DATA / "squad_v1.json", data), data, 3)
    assert not isinstance(records, list) and all(
        r["answer"] for r in records
    )  # no-answer off: always a span


@pytest.mark.ray
def test_search_and_select_keep_articles_whole(tiny_bert, tmp_path, ray_session):
    from sft_tune.core.prepare import prepare_data
    from sft_tune.select import select_best
    from sft_tune.sweep.checks import load_space
    from sft_tune.sweep.run import run_search

    raw = yaml.safe_load((ROOT / "search_spaces" / "tiny.yaml").read_text())
    raw["config"]["model"] = {"name_or_path": str(tiny_bert), "task": "qa"}
    raw["config"]["data"] = {
        "train": str(DATA / "squad_v2.json"),
        "test": str(DATA / "squad_v1.json"),
        "unlabelled": [str(DATA / "unlabelled.jsonl")],
        "max_length": 32,
        "stride": 8,
        "validation_fraction": 0.0,
    }
    raw["params"]["phase1.steps"] = {"type": "int", "low": 0, "high": 2, "step": 2}
    raw["params"]["phase2.epochs"] = {"type": "int", "low": 1, "high": 1}
    raw["search"].update(
        name="qa",
        metric="f1",
        num_trials=2,
        max_concurrent=2,
        folds=2,
        scheduler="none",
        storage_path=str(tmp_path / "sweeps"),
    )
    space = tmp_path / "qa.yaml"
    space.write_text(yaml.safe_dump(raw))

    result = run_search(space, use_wandb=False)
    assert result.complete and [t.status for t in result.trials] == ["COMPLETE"] * 2
    assert all(len(t.fold_scores) == 2 and 0 <= t.cv_mean <= 1 for t in result.trials)
    assert result.tokenization_passes == 3  # windows, the LM texts, the unlabelled pool: once each

    sweep = load_space(space)
    questions = TASK.read(DATA / "squad_v2.json", sweep.base_config.data, "x")
    folds = prepare_data(sweep.base_config, TASK, 2, sweep.search.seed).splits
    for train, held in folds:
        assert not {questions.titles[i] for i in train} & {questions.titles[i] for i in held}
        assert not {questions.contexts[i] for i in train} & {questions.contexts[i] for i in held}

    selected = select_best(result.sweep_dir, use_wandb=False, progress=False)
    assert selected["metric"] == "f1" and set(selected["test"]) == {"exact_match", "f1", "loss"}
    assert AutoModelForQuestionAnswering.from_pretrained(selected["model_dir"]) is not None


def test_shipped_qa_space_loads_and_its_example_data_are_valid():
    from sft_tune.sweep.checks import load_space

    sweep = load_space(ROOT / "search_spaces" / "qa.yaml")
    config = sweep.base_config
    assert (
        config.model.task == "qa"
        and sweep.search.metric == "f1"
        and "minilm" in config.model.name_or_path
    )
    assert config.data.train == (ROOT / "examples" / "qa" / "train.json").resolve()
    questions = TASK.read(config.data.train, config.data, "labelled training file")
    assert len(questions) >= 30 and 0 < TASK.strata(questions).count("unanswerable") < len(
        questions
    )
    assert len(set(TASK.groups(questions))) >= sweep.search.folds
    assert [p.is_file() for p in config.data.unlabelled] == [True]


@pytest.mark.parametrize("metric", ["has_answer_f1", "no_answer_exact_match"])
def test_a_search_scored_by_answerable_or_unanswerable_questions_needs_unanswerable_ones(
    tiny_bert, tmp_path, metric
):
    """On SQuAD v1 data (every question answerable) has_answer_* / no_answer_* are never scored:
    the space check refuses them (the fold loop raised KeyError)."""
    from sft_tune.sweep.checks import check_space

    raw = yaml.safe_load((ROOT / "search_spaces" / "tiny.yaml").read_text())
    raw["config"]["model"] = {"name_or_path": str(tiny_bert), "task": "qa"}
    raw["config"]["data"] = {
        "train": str(DATA / "squad_v1.json"),
        "max_length": 32,
        "stride": 8,
        "validation_fraction": 0.0,
    }
    raw["params"] = {"phase2.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}}
    raw["search"].update(metric=metric, folds=2, storage_path=str(tmp_path / "sweeps"))
    space = tmp_path / "qa.yaml"
    space.write_text(yaml.safe_dump(raw))
    (problem,) = check_space(space).problems
    assert problem.where == "search.metric" and problem.value == metric
    assert "squad_v1.json" in problem.rule and "f1" in problem.fix
    raw["config"]["data"]["train"] = str(DATA / "squad_v2.json")
    space.write_text(yaml.safe_dump(raw))
    assert check_space(space).problems == []
