"""The docs can be trusted: docs/config.md is what the schemas say today, every link in README and
docs/ resolves, and the search guide's key table names the real keys."""

import re

from sft_tune import configdoc
from sft_tune.config import RunConfig
from sft_tune.sweep.space import SearchSettings


def test_config_reference_is_current():
    assert configdoc.DOC.read_text(encoding="utf-8") == configdoc.render(), (
        "docs/config.md is stale: run `python -m sft_tune.configdoc` and commit it"
    )


def test_every_field_is_documented_with_its_default():
    text = configdoc.render()
    for key, field in RunConfig.model_fields["phase1"].annotation.model_fields.items():
        assert f"| `phase1.{key}` |" in text
        assert field.description, f"phase1.{key} has no description"
    for key in SearchSettings.model_fields:
        assert f"| `search.{key}` |" in text
    assert "| `data.ner.tag_scheme` | one of `auto`, `IOB1`, `IOB2`, `BIOES` | `auto` |" in text
    assert "| `model.name_or_path` | text | (required) |" in text
    undocumented = [row[0] for row in configdoc.rows(RunConfig) if not row[3]]
    assert not undocumented, f"fields without a description: {undocumented}"


def test_check_reports_a_stale_file(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "config.md"
    stale.write_text("# old\n")
    monkeypatch.setattr(configdoc, "DOC", stale)
    assert configdoc.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert configdoc.main([]) == 0
    assert configdoc.main(["--check"]) == 0


ROOT = configdoc.DOC.parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped but `-` and `_`, spaces to `-`, a
    repeated heading numbered."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _outside_code(text):
        match = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            anchors.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
    return anchors


def _outside_code(text: str) -> list[str]:
    lines, fence = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fence = not fence
        lines.append("" if fence or line.lstrip().startswith("```") else line)
    return lines


def test_every_relative_link_in_readme_and_docs_resolves():
    broken = []
    for page in PAGES:
        for number, line in enumerate(_outside_code(page.read_text(encoding="utf-8")), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line)):
                if re.match(r"^[a-z]+://", target):
                    continue
                path, _, anchor = target.partition("#")
                dest = (page.parent / path).resolve() if path else page
                if not dest.exists():
                    broken.append(f"{page.name}:{number}: {target} (no such file)")
                elif anchor and anchor not in _anchors(dest.read_text(encoding="utf-8")):
                    broken.append(f"{page.name}:{number}: {target} (no such heading)")
    assert not broken, broken


def test_the_search_guide_names_only_real_search_keys():
    """docs/search.md explains the `search:` keys in a table of its own; it may not drift from the
    schema: every key it names exists, and every key is named."""
    text = (ROOT / "docs" / "search.md").read_text(encoding="utf-8")
    table = text[text.index("| search key |") :].split("\n\n")[0]
    named = {
        key
        for cell in re.findall(r"^\| ([^|]+) \|", table, re.M)
        for key in re.findall(r"`(\w+)`", cell)
    }
    assert named == set(SearchSettings.model_fields), named ^ set(SearchSettings.model_fields)
