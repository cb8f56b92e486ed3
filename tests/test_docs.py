"""docs/operations.md stays true to the code: its settings table is the generator's output, every settings
class is in that table, and every Prometheus metric the code defines is documented."""

import ast
import importlib
import re
from pathlib import Path

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings

from shared.settings import CommonSettings
from tools import settings_table

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "operations.md"


def test_the_settings_table_in_the_operations_doc_is_current():
    assert settings_table.embedded(DOC.read_text()) == settings_table.render(), (
        "the settings table in docs/operations.md is out of date: run `python -m tools.settings_table --write`"
    )


def test_every_settings_class_is_in_the_table():
    documented = {settings_class for _, settings_class in settings_table.SERVICES}
    for path in [ROOT / "shared" / "settings.py", *sorted(ROOT.glob("services/*/settings.py"))]:
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, CommonSettings)
                and value.__module__ == module.__name__
            ):
                assert value in documented, f"{value.__name__} is missing from tools.settings_table.SERVICES"


def test_every_metric_the_code_defines_is_documented():
    defined = set()
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("shared/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).startswith("warp_")
            ):
                defined.add(node.args[0].value)
    assert len(defined) >= 13
    documented = set(re.findall(r"`(warp_[a-z_]+)`", DOC.read_text()))
    assert defined <= documented, f"metrics missing from docs/operations.md: {sorted(defined - documented)}"


def test_write_replaces_only_the_table(tmp_path):
    doc = tmp_path / "operations.md"
    doc.write_text(f"# title\n\n{settings_table.BEGIN}\n| stale |\n{settings_table.END}\n\nafter\n")
    assert settings_table.write(doc) is True
    text = doc.read_text()
    assert text.startswith(f"# title\n\n{settings_table.BEGIN}\n| variable |")
    assert text.endswith(f"|\n{settings_table.END}\n\nafter\n")
    assert settings_table.embedded(text) == settings_table.render()
    assert settings_table.write(doc) is False


def test_defaults_hide_secrets_and_show_unset():
    rows = {row.variable: row for row in settings_table.rows()}
    assert rows["WARP_ADMIN_KEY"].default() == "unset"
    assert rows["WARP_HF_TOKEN"].default() == "unset"
    assert rows["WARP_INITIAL_WEIGHTS"].default() == "unset"
    assert rows["WARP_BROKER_URL"].services == ["all"]
    assert rows["WARP_HEALTH_PORT"].services == ["voting", "trainer", "publisher"]


def test_a_setting_without_a_description_is_an_error():
    class Undocumented(BaseSettings):
        knob: int = Field(3, ge=1)

    with pytest.raises(ValueError, match="WARP_KNOB has no description"):
        settings_table.meaning_text("WARP_KNOB", Undocumented.model_fields["knob"])
