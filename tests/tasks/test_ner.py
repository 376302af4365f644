"""Token classification (task `ner`): CoNLL/JSONL reading, schemes, sub-word labels, windows,
seqeval scores, training end to end, prediction, and one small search."""

import importlib.util
import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from tiny import save_tiny_bert, save_tiny_gpt2

from sft_tune.config import DataConfig
from sft_tune.errors import InputError
from sft_tune.runconfig import parse_config
from sft_tune.tasks import get_task
from sft_tune.tasks.ner.files import detect_scheme, join_words, split_words
from sft_tune.tasks.ner.model import Windows, entity_scores, stitch, window_spans

DATA = Path(__file__).parents[1] / "data" / "ner"
ROOT = Path(__file__).resolve().parents[2]

PEOPLE = ["john", "mary", "peter", "anna", "johnson", "maryton"]  # the last two split into pieces
PLACES = ["paris", "london", "rome", "oslo", "new york"]
FIRMS = ["acme", "globex", "initech", "acme corp"]
FILLER = "the a today city bus was is it this our very so and then big".split()
TEMPLATES = [
    "{PER} works for {ORG} in {LOC} .",
    "the {ORG} office in {LOC} is big .",
    "{PER} visited {LOC} today .",
    "our city bus was late today .",
    "{PER} and {PER} left {ORG} .",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models step several times faster on one thread when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def wordpiece_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT whose WordPiece vocabulary has `##` pieces, so words really split."""
    folder = tmp_path_factory.mktemp("wordpiece-bert")
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted(
        {w for name in PEOPLE[:4] + PLACES + FIRMS for w in name.split()}
        | set(FILLER)
        | {"works", "for", "in", "office", "visited", "our", "late", "left", "."}
    )
    pieces = list(letters) + [f"##{c}" for c in letters] + ["##son", "##ton"]
    vocab = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + [w for w in words if w not in pieces]
        + pieces
    )
    return save_tiny_bert(folder, vocab)


def _tokenizer(folder):
    from sft_tune.config import ModelConfig
    from sft_tune.core.model import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=str(folder), task="ner"), get_task("ner"))


def toy_conll(path: Path, documents: int, seed: int) -> Path:
    """A learnable CoNLL file: entity words come from fixed lists, 4 sentences a document."""
    rng = random.Random(seed)
    lines = []
    for _ in range(documents):
        lines += ["-DOCSTART- -X- O", ""]
        for _ in range(4):
            for piece in rng.choice(TEMPLATES).split():
                kind = piece[1:-1] if piece.startswith("{") else None
                words = (
                    rng.choice({"PER": PEOPLE, "LOC": PLACES, "ORG": FIRMS}[kind]).split()
                    if kind
                    else [piece]
                )
                lines += [
                    f"{w.capitalize() if kind else w} "
                    f"{('B-' if i == 0 else 'I-') + kind if kind else 'O'}"
                    for i, w in enumerate(words)
                ]
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def _read(name, **data):
    task = get_task("ner")
    config = DataConfig(train=DATA / name, **data)
    return task, task.read(DATA / name, config, "labelled training file"), config


# ---- reading ----------------------------------------------------------------------------------


def test_conll_with_documents():
    task, sentences, config = _read("docs.conll")
    assert sentences.words[0] == [
        "John",
        "Smith",
        "works",
        "for",
        "Acme",
        "Corp",
        "in",
        "Paris",
        ".",
    ]
    assert sentences.tags[2] == ["B-PER", "O", "B-LOC", "I-LOC", "O", "O"]
    assert sentences.scheme == "IOB2" and len(sentences.words) == 4
    assert task.groups(sentences) == ["document 1", "document 1", "document 2", "document 3"]
    assert task.texts(sentences)[1] == "He left Acme ."
    assert task.label_names(sentences, config) == [
        "O",
        "B-LOC",
        "B-ORG",
        "B-PER",
        "I-LOC",
        "I-ORG",
        "I-PER",
    ]
    # Rare types join the largest stratum: too few sentences here for any type of its own.
    assert len(task.strata(sentences)) == 4 and len(set(task.strata(sentences))) == 1


def test_jsonl_and_saved_dataset_with_class_labels(tmp_path):
    import datasets

    task, sentences, config = _read("sentences.jsonl")
    assert (
        sentences.words[2] == ["Bob", "Stone", "left", "Initech", "."]
        and sentences.scheme == "IOB2"
    )
    assert task.groups(sentences) == ["news-1", "news-1", "news-2"]
    names = ["O", "B-PER", "I-PER"]
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    datasets.Dataset.from_dict(
        {"tokens": [["Ann", "Lee", "sang"]], "tags": [[1, 2, 0]]}, features=features
    ).save_to_disk(tmp_path / "saved")
    saved = task.read(tmp_path / "saved", config, "labelled training file")
    assert saved.tags == [["B-PER", "I-PER", "O"]] and task.groups(saved) is None


@pytest.mark.parametrize(
    "name, scheme",
    [
        ("docs.conll", "IOB2"),
        ("iob1.txt", "IOB1"),
        ("bioes.bio", "BIOES"),
        ("sentences.jsonl", "IOB2"),
    ],
)
def test_scheme_detection(name, scheme):
    assert _read(name)[1].scheme == scheme


def test_scheme_rules():
    assert detect_scheme([["I-PER", "O"]]) == "IOB1"  # an entity starting with I- at sentence start
    assert detect_scheme([["B-PER", "I-LOC"]]) == "IOB1"  # ... or after another type
    assert detect_scheme([["B-PER", "I-PER", "O", "B-LOC"]]) == "IOB2"
    assert detect_scheme([["B-PER", "E-PER"], ["I-PER"]]) == "BIOES"
    task, sentences, config = _read("bioes.bio")
    assert task.label_names(sentences, config) == ["O"] + [
        f"{p}-{t}" for p in "BEIS" for t in ("LOC", "ORG", "PER")
    ]
    with pytest.raises(InputError) as caught:  # BIOES tags in a file declared IOB2
        _read("bioes.bio", ner={"tag_scheme": "IOB2"})
    assert (
        "bioes.bio line 1" in str(caught.value)
        and "'S-PER'" in str(caught.value)
        and "IOB2 scheme" in str(caught.value)
    )


def test_hironsan_corpus_reads_unchanged():
    spec = importlib.util.find_spec("hironsan")
    if spec is None:
        pytest.skip("hironsancorpus is not installed")
    corpus = Path(spec.submodule_search_locations[0]) / "corpus" / "iob_sents.txt"
    task = get_task("ner")
    sentences = task.read(corpus, DataConfig(train=corpus), "labelled training file")
    assert len(sentences.words) == 500 and sum(map(len, sentences.words)) == 15520
    assert sentences.words[0][:2] == ["2005", "年"] and sentences.tags[0][:2] == ["B-DAT", "I-DAT"]
    assert "\u3000" in {
        w for ws in sentences.words for w in ws
    }  # tab columns keep a full-width space token
    assert sentences.scheme == "IOB1"  # two entities start with I- after O
    # One stratum per sentence (its rarest type); MON and PER (under 20 sentences) join the largest.
    assert set(task.strata(sentences)) == {"none", "PSN", "ORG", "LOC", "ART", "TIM", "DAT"}
    assert task.groups(sentences) is None  # no -DOCSTART-: sentences are split independently


@pytest.mark.parametrize(
    "name, where, words",
    [
        ("single_column.conll", "single_column.conll line 2", ["2 or more columns"]),
        (
            "bad_tag.conll",
            "bad_tag.conll line 4",
            ["'PERSON'", "a tag must be O or B-/I-/E-/S-TYPE"],
        ),
        ("mismatch.jsonl", "mismatch.jsonl row 2", ["2 tokens, 1 tags", "one tag per token"]),
        ("empty.conll", "empty.conll", ["at least one sentence"]),
        ("missing.conll", "missing.conll", ["must exist"]),
    ],
)
def test_bad_files_give_clear_errors(name, where, words):
    with pytest.raises(InputError) as caught:
        _read(name)
    message = str(caught.value)
    assert where in message and all(w in message for w in words), message


def test_unknown_test_tags_name_the_line():
    task, train, config = _read("docs.conll")
    names = task.label_names(train, config)
    test = task.read(DATA / "unknown_tag.conll", config, "labelled test file")
    with pytest.raises(InputError) as caught:
        task.check_labels(test, names, DATA / "unknown_tag.conll")
    assert "unknown_tag.conll line 6" in str(caught.value) and "{'B-MISC': 1}" in str(caught.value)


# ---- sub-words and windows ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "subwords, expected",
    [("first", [-100, 3, -100, 0, 0, -100]), ("all", [-100, 3, 3, 0, 0, -100])],
)
def test_subword_labels(wordpiece_bert, subwords, expected):
    tokenizer = _tokenizer(wordpiece_bert)
    task, sentences, config = _read(
        "sentences.jsonl", max_length=32, stride=4, ner={"label_subwords": subwords}
    )
    sentences.words, sentences.tags = [["Johnson", "left", "."]], [["B-PER", "O", "O"]]
    encoded = task.encode(sentences, tokenizer, ["O", "B-LOC", "B-ORG", "B-PER", "I-PER"], config)
    assert tokenizer.convert_ids_to_tokens(encoded.input_ids[0]) == [
        "[CLS]",
        "john",
        "##son",
        "left",
        ".",
        "[SEP]",
    ]
    assert encoded.labels[0] == expected and encoded.first == [[0, 2, 3]]


@pytest.mark.parametrize("model_fixture", ["wordpiece_bert", "tiny_gpt2"])
def test_words_tokenize_as_with_is_split_into_words(model_fixture, request):
    from sft_tune.tasks.ner.model import word_pieces

    tokenizer = _tokenizer(request.getfixturevalue(model_fixture))
    words = ["Johnson", "visited", "new", "Maryton", "today", "."]
    pieces = word_pieces([words], tokenizer)
    encoding = tokenizer([words], is_split_into_words=True, add_special_tokens=False)
    assert [i for w in words for i in pieces[w]] == encoding["input_ids"][0]


class Oracle(torch.nn.Module):
    """A stand-in model whose logits pick each token's own label (0 where none)."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.num_labels, self.weight = num_labels, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, labels=None):
        logits = torch.nn.functional.one_hot(labels.clamp(min=0), self.num_labels).float()
        return SimpleNamespace(loss=torch.tensor(0.5), logits=logits)


@pytest.mark.parametrize("side", ["right", "left"])
def test_long_sentence_windows_cover_every_token_and_each_word_is_read_once(wordpiece_bert, side):
    tokenizer = _tokenizer(wordpiece_bert)
    task, sentences, config = _read("sentences.jsonl", max_length=12, stride=3)
    rng = random.Random(3)
    words = [rng.choice(["Johnson", "Maryton", "Oslo", "Paris", "today", "was"]) for _ in range(40)]
    tags = [rng.choice(["B-PER", "I-PER", "B-LOC", "O"]) for _ in words]
    sentences.words, sentences.tags = [["Anna", "left"], words], [["B-PER", "O"], tags]
    names = ["O", "B-LOC", "B-PER", "I-PER"]
    encoded = task.encode(sentences, tokenizer, names, config)
    long = [w for w in range(len(encoded)) if encoded.sentence[w] == 1]
    assert len(long) > 4 and all(len(encoded.input_ids[w]) <= 12 for w in range(len(encoded)))
    covered = [p for w in long for p in range(encoded.start[w], encoded.end(w))]
    assert sorted(set(covered)) == list(range(encoded.length[1]))  # no token lost
    assert all(
        encoded.end(a) - encoded.start[b] == 3 for a, b in zip(long, long[1:])
    )  # overlap = stride
    # The oracle reads every word at its first sub-token: all right only if each word is read once,
    # there.
    batches = [[0, 3], [1, 4, 2], list(range(5, len(encoded)))]
    picked, loss = stitch(
        Oracle(len(names)), encoded, batches, tokenizer.pad_token_id, side, torch.device("cpu")
    )
    assert sorted(picked) == [(0, 0), (0, 1)] + [(1, w) for w in range(40)]
    assert [names[picked[(1, w)][0]] for w in range(40)] == tags and loss == pytest.approx(0.5)
    scores = task.evaluate(
        Oracle(len(names)), encoded, batches, tokenizer.pad_token_id, side, torch.device("cpu")
    )
    assert scores["f1"] == 1.0 and scores["accuracy"] == 1.0


def test_stitching_takes_the_window_farthest_from_a_cut():
    # 10 one-token words, 4 tokens a window sharing 2: windows [0,4) [2,6) [4,8) [6,10).
    assert window_spans(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    spans = window_spans(10, 4, 2)
    windows = Windows(
        sentence=[0] * 4,
        input_ids=[[w + 1] * 4 for w in range(4)],
        labels=[],
        start=[s for s, _ in spans],
        first=[list(range(10))],
        length=[10],
        tags=[[0] * 10],
        prefix=0,
        suffix=0,
        names=["O"],
        scheme="IOB2",
    )

    class WindowId(torch.nn.Module):  # predicts, for every token, the number of its window
        def forward(self, input_ids, attention_mask):
            return SimpleNamespace(logits=torch.nn.functional.one_hot(input_ids, 6).float())

    picked, _ = stitch(WindowId(), windows, [[0, 1], [2, 3]], 0, "right", torch.device("cpu"))
    # Values are window + 1. Word 2: window 0 (1 from its right cut) beats window 1 (0 from its left
    # cut); word 3: window 1 (1 and 2 away) beats window 0 (0); word 7: window 3 (1 from its left
    # cut, its right end is the sentence end) beats window 2 (0).
    assert [picked[(0, w)][0] for w in range(10)] == [1, 1, 1, 2, 2, 3, 3, 4, 4, 4]


def test_stride_must_leave_room(wordpiece_bert, tmp_path):
    # The windowed tasks' one stride rule, checked with the config (before any file is read).
    raw = _ner_config(
        wordpiece_bert, DATA / "docs.conll", tmp_path, data={"max_length": 10, "stride": 5}
    )
    with pytest.raises(
        InputError,
        match=r"data.stride: got 5; windows must overlap by less than half of data.max_length "
        r"\(10\)",
    ):
        parse_config(raw)
    parse_config(
        _ner_config(
            wordpiece_bert, DATA / "docs.conll", tmp_path, data={"max_length": 10, "stride": 4}
        )
    )


# ---- scores -------------------------------------------------------------------------------------


def test_entity_scores_against_hand_counts():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    found = [["B-PER", "I-PER", "O", "I-LOC"], ["B-ORG", "O", "B-LOC"]]
    # strict IOB2: found entities PER(0-1), ORG, LOC(wrong); the I-LOC start is no entity.
    # tp = 2 (PER, ORG), 3 found, 4 gold -> P 2/3, R 1/2, F1 4/7; PER: P 1, R 1/2 -> 2/3.
    scores = entity_scores(gold, found, "IOB2")
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(1 / 2)
    assert scores["f1"] == pytest.approx(4 / 7) and scores["f1/PER"] == pytest.approx(2 / 3)
    assert (
        scores["f1/ORG"] == 1.0
        and scores["f1/LOC"] == 0.0
        and scores["accuracy"] == pytest.approx(5 / 7)
    )
    # conlleval mode (IOB1) counts "O I-LOC" as a LOC entity: tp 3 of 4 found and 4 gold.
    assert entity_scores(gold, found, "IOB1")["f1"] == pytest.approx(3 / 4)
    bioes = entity_scores([["B-PER", "E-PER", "S-LOC"]], [["B-PER", "E-PER", "B-LOC"]], "BIOES")
    assert bioes["f1"] == pytest.approx(2 / 3) and bioes["f1/PER"] == 1.0
    assert set(get_task("ner").metrics) - {"loss"} <= set(scores)  # evaluate adds the loss


# ---- training, prediction, export, search --------------------------------------------------------


def _ner_config(model, train, out, **overrides):
    raw = {
        "model": {"name_or_path": str(model), "task": "ner"},
        "data": {"train": str(train), "max_length": 24, "stride": 6, "validation_fraction": 0.25},
        "phase1": {"steps": 10, "learning_rate": 1e-3, "lm_batch_size": 8, "task_batch_size": 8},
        "phase2": {"epochs": 10, "learning_rate": 3e-3, "batch_size": 8},
        "optimizer": {"warmup_ratio": 0.0},
        "seed": 3,
        "output_dir": str(out),
    }
    for section, value in overrides.items():
        raw[section] = {**raw.get(section, {}), **value} if isinstance(value, dict) else value
    return raw


def test_train_predict_and_export(wordpiece_bert, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from sft_tune.predict import predict
    from sft_tune.run import train

    train_file, test_file = (
        toy_conll(tmp_path / "train.conll", 16, seed=1),
        toy_conll(tmp_path / "test.iob", 4, seed=2),
    )
    reports = []
    config = parse_config(
        _ner_config(wordpiece_bert, train_file, tmp_path / "out", data={"test": str(test_file)})
    )
    metrics = train(config, report=lambda m, c: reports.append(m), progress=False)
    assert [(r["phase"], r["epoch"]) for r in reports] == [(1, 0)] + [(2, e) for e in range(1, 11)]
    assert {"loss", "precision", "recall", "f1", "accuracy", "f1/PER", "f1/LOC", "f1/ORG"} <= set(
        metrics["test"]
    )
    assert metrics["test"]["f1"] >= 0.9, metrics["test"]  # the toy task is learnable

    folder = tmp_path / "out" / "model"
    model = AutoModelForTokenClassification.from_pretrained(folder)
    assert model.config.id2label[0] == "O" and set(model.config.label2id) == {
        "O",
        "B-LOC",
        "B-ORG",
        "B-PER",
        "I-LOC",
        "I-ORG",
        "I-PER",
    }
    assert AutoTokenizer.from_pretrained(folder).tokenize("Johnson") == ["john", "##son"]

    inputs = tmp_path / "input.jsonl"
    inputs.write_text(
        json.dumps({"text": "Johnson works for Acme Corp in New York."})
        + "\n"
        + json.dumps({"tokens": ["x"], "text": "the bus was late ."})
        + "\n"
    )
    records = list(predict(folder, inputs))
    assert [r["text"] for r in records] == [
        "Johnson works for Acme Corp in New York.",
        "the bus was late .",
    ]
    found = [(e["type"], e["start"], e["end"], e["text"]) for e in records[0]["entities"]]
    assert found == [
        ("PER", 0, 7, "Johnson"),
        ("ORG", 18, 27, "Acme Corp"),
        ("LOC", 31, 39, "New York"),
    ]
    assert all(0 < e["score"] <= 1 for e in records[0]["entities"]) and records[1]["entities"] == []

    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text(
        json.dumps({"tokens": ["Mary", "visited", "Oslo", "."]})
        + "\n"
        + json.dumps({"tokens": []})
        + "\n"
    )
    records = list(predict(folder, tokens))
    assert [(e["type"], e["start"], e["end"]) for e in records[0]["entities"]] == [
        ("PER", 0, 4),
        ("LOC", 13, 17),
    ]
    assert records[1] == {"text": "", "entities": []}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "no text column"}) + "\n")
    with pytest.raises(InputError, match="a text column 'text' or a tokens column 'tokens'"):
        predict(folder, bad)  # raised on the call, before any record is asked for


def test_hironsan_corpus_trains_with_a_byte_level_gpt2(tmp_path):
    spec = importlib.util.find_spec("hironsan")
    if spec is None:
        pytest.skip("hironsancorpus is not installed")

    from sft_tune.run import train

    corpus = Path(spec.submodule_search_locations[0]) / "corpus" / "iob_sents.txt"
    task = get_task("ner")
    texts = task.texts(task.read(corpus, DataConfig(train=corpus), "corpus"))
    folder = tmp_path / "gpt2-ja"
    folder.mkdir()
    save_tiny_gpt2(folder, texts, 600, 2, seed=None)

    config = parse_config(
        _ner_config(
            folder,
            corpus,
            tmp_path / "out",
            data={"max_length": 64, "stride": 16, "validation_fraction": 0.1},
            phase1={"steps": 4},
            phase2={"epochs": 1, "batch_size": 32},
        )
    )
    metrics = train(config, progress=False)
    validation = metrics["validation"]
    assert (
        validation["phase"] == 2
        and 0.0 <= validation["f1"] <= 1.0
        and validation["loss"] == validation["loss"]
    )
    history = [
        json.loads(line)
        for line in (tmp_path / "out" / "model" / "history.jsonl").read_text().splitlines()
    ]
    assert sum(h["phase"] == 1 for h in history) == 4 and all(
        torch.isfinite(torch.tensor(h["task_loss"])) for h in history
    )
    run = json.loads((tmp_path / "out" / "model" / "run.json").read_text())
    assert "B-PSN" in run["labels"] and "I-ART" in run["labels"]

    # Raw Japanese text at predict time: one word per character, entities as offsets into it.
    from sft_tune.predict import predict

    text = "東京タワーは二〇〇五年に山田太郎が訪れた。"
    (tmp_path / "raw.jsonl").write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    (record,) = predict(tmp_path / "out" / "model", tmp_path / "raw.jsonl")
    assert set(record) == {"text", "entities"} and record["text"] == text
    assert isinstance(record["entities"], list)
    for entity in record["entities"]:
        assert entity["text"] == text[entity["start"] : entity["end"]] and " " not in entity["text"]

    # A model this small may find no entity at all, so the same folder with a head that tags
    # every token B-PSN: then each word is one PSN entity, at the word's character offsets.
    from transformers import AutoModelForTokenClassification

    forced = tmp_path / "forced"
    shutil.copytree(tmp_path / "out" / "model", forced)
    model = AutoModelForTokenClassification.from_pretrained(forced)
    with torch.no_grad():
        model.classifier.bias.fill_(-100.0)
        model.classifier.bias[model.config.label2id["B-PSN"]] = 100.0
    model.save_pretrained(forced)
    (record,) = predict(forced, tmp_path / "raw.jsonl")
    words, spans = split_words(text)
    assert [(e["type"], e["start"], e["end"], e["text"]) for e in record["entities"]] == [
        ("PSN", start, end, word) for word, (start, end) in zip(words, spans)
    ]


@pytest.mark.parametrize(
    "text, words",
    [
        ("李岚清在全国会议上讲话", list("李岚清在全国会议上讲话")),
        ("東京タワーは2024年に", ["東", "京", "タ", "ワ", "ー", "は", "2024", "年", "に"]),
        ("Apple在北京开店。", ["Apple", "在", "北", "京", "开", "店", "。"]),
        ("สวัสดี ครับ", ["ส", "วั", "ส", "ดี", "ค", "รั", "บ"]),  # one grapheme each
        (
            "서울에서 New York-based O'Neil (IBM)",
            ["서울에서", "New", "York-based", "O'Neil", "(", "IBM", ")"],
        ),
    ],
)
def test_raw_text_splits_into_words_per_script(text, words):
    found, spans = split_words(text)
    assert found == words and [text[a:b] for a, b in spans] == words


def test_words_of_unspaced_scripts_join_without_spaces(tmp_path):
    assert join_words(["李", "岚", "清", "在", "北", "京"]) == (
        "李岚清在北京",
        [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)],
    )
    assert join_words(["New", "York", "在", "北", "京", "."])[0] == "New York在北京."
    rows = [{"tokens": ["李", "岚", "清", "在", "全", "国"]}, {"tokens": ["New", "York"]}]
    path = tmp_path / "tokens.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    read = get_task("ner").read_input(path, DataConfig(train=path))
    assert [(text, spans[-1]) for text, _, spans in read] == [
        ("李岚清在全国", (5, 6)),
        ("New York", (4, 8)),
    ]


def test_shipped_ner_space_loads():
    from sft_tune.sweep.checks import load_space

    sweep = load_space(ROOT / "search_spaces" / "ner.yaml")
    assert sweep.base_config.model.task == "ner" and sweep.search.metric == "f1"
    assert sweep.base_config.data.train == ROOT / "examples" / "ner" / "train.conll"
    task = get_task("ner")
    train = task.read(
        sweep.base_config.data.train, sweep.base_config.data, "labelled training file"
    )
    test = task.read(sweep.base_config.data.test, sweep.base_config.data, "labelled test file")
    names = task.label_names(train, sweep.base_config.data)
    task.check_labels(test, names, sweep.base_config.data.test)
    assert (
        train.scheme == "IOB2"
        and len(set(task.groups(train))) == 12
        and {"B-PER", "B-ORG", "B-LOC"} <= set(names)
    )


@pytest.mark.ray
def _sweep_config(model, tmp_path, epochs):
    """A toy CoNLL training file (8 documents) and an unlabelled pool, and a run config over them
    for a sweep (the folds validate: no validation split)."""
    train_file = toy_conll(tmp_path / "train.conll", 8, seed=5)
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text(
        "".join(json.dumps({"text": f"the city bus was late {word} ."}) + "\n" for word in FILLER)
    )
    config = _ner_config(
        model,
        train_file,
        tmp_path / "unused",
        data={"unlabelled": [str(unlabelled)], "validation_fraction": 0.0},
        phase1={"steps": 2},
        phase2={"epochs": epochs},
    )
    return train_file, config


def test_search_keeps_documents_whole_and_select_exports(
    wordpiece_bert, tmp_path, ray_session, monkeypatch
):
    from transformers import AutoModelForTokenClassification

    from sft_tune.core import prepare as cv
    from sft_tune.select import select_best
    from sft_tune.sweep.run import run_search

    train_file, config = _sweep_config(wordpiece_bert, tmp_path, epochs=4)
    space = {
        "config": config,
        "params": {
            "phase1.alpha": {"type": "float", "low": 0.0, "high": 2.0},
            "phase2.learning_rate": {"type": "float", "low": 3e-3, "high": 1e-2, "log": True},
        },
        "search": {
            "name": "ner",
            "num_trials": 2,
            "folds": 2,
            "scheduler": "none",
            "storage_path": str(tmp_path / "sweeps"),
        },
    }
    path = tmp_path / "ner-space.yaml"
    path.write_text(yaml.safe_dump(space))
    folds, real_make_folds = [], cv.make_folds

    def recording_make_folds(*args, **kwargs):  # the folds the sweep's driver really made
        folds.extend(real_make_folds(*args, **kwargs))
        return list(folds)

    monkeypatch.setattr(cv, "make_folds", recording_make_folds)
    result = run_search(path, use_wandb=False)
    assert (
        result.complete
        and len(result.trials) == 2
        and all(t.status == "COMPLETE" for t in result.trials)
    )
    assert all(len(t.fold_scores) == 2 and 0.0 <= t.cv_mean <= 1.0 for t in result.trials)
    task = get_task("ner")
    documents = task.groups(task.read(train_file, DataConfig(train=train_file), "train"))
    assert len(folds) == 2
    for train_part, held in folds:  # no document on both sides of a fold
        assert not {documents[i] for i in train_part} & {documents[i] for i in held}

    selected = select_best(result.sweep_dir, use_wandb=False, progress=False)
    model = AutoModelForTokenClassification.from_pretrained(selected["model_dir"])
    assert model.config.num_labels == 7 and selected["metric"] == "f1"


def test_the_shipped_ner_space_really_searches_label_subwords(
    wordpiece_bert, tmp_path, ray_session
):
    """search_spaces/ner.yaml searches data.ner.label_subwords: two trials that differ only in
    it train on different encodings (the sweep encoded the labelled data once from the base
    config, so every trial trained on `first` whatever it sampled), each the one `encode_data`
    makes for its value, and the store made the second one once."""
    from sft_tune.core.files import read_data
    from sft_tune.core.prepare import encode_data, split_data
    from sft_tune.runconfig import parse_config
    from sft_tune.sweep.checks import load_space
    from sft_tune.sweep.run import run_search

    shipped = yaml.safe_load((ROOT / "search_spaces" / "ner.yaml").read_text())
    assert "data.ner.label_subwords" in shipped["params"]
    _, config = _sweep_config(wordpiece_bert, tmp_path, epochs=1)
    point = {"phase1.alpha": 1.0, "phase1.learning_rate": 3e-4, "phase2.learning_rate": 1e-3}
    point.update({"phase1.steps": 10, "phase2.epochs": 4})
    space = {
        "config": config,
        "params": shipped["params"],
        "search": {
            **shipped["search"],
            "name": "ner-subwords",
            "num_trials": 2,
            "folds": 2,
            "scheduler": "none",
            "storage_path": str(tmp_path / "sweeps"),
            "initial_points": [
                {**point, "data.ner.label_subwords": "first"},
                {**point, "data.ner.label_subwords": "all"},
            ],
        },
    }
    path = tmp_path / "ner-space.yaml"
    path.write_text(yaml.safe_dump(space))
    result = run_search(path, use_wandb=False)
    by_value = {t.params["data.ner.label_subwords"]: t for t in result.trials}
    assert set(by_value) == {"first", "all"}
    assert all(t.status == "COMPLETE" for t in result.trials)
    assert by_value["first"].encoding != by_value["all"].encoding

    sweep = load_space(path)
    raw = read_data(sweep.base_config, get_task("ner"), lm=True)
    splits = split_data(sweep.base_config, get_task("ner"), raw, 2, sweep.search.seed)
    for value, trial in by_value.items():
        trial_config = parse_config(
            {**config, "data": {**config["data"], "ner": {"label_subwords": value}}}
        )
        expected = encode_data(trial_config, get_task("ner"), raw, splits, lm=True)
        assert trial.encoding == expected.digest
    summary = json.loads((result.sweep_dir / "summary.json").read_text())
    assert summary["encodings"] == 2
