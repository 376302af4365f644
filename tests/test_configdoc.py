"""docs/config.md is generated from the schemas: it must match what they say today."""

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
