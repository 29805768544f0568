"""The API reference (``make docs``): it builds, and it documents every public name and rule."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import bioplausible as bp
from bioplausible.core.rule import Rule
from bioplausible.rules.registry import RULES

ROOT = Path(__file__).resolve().parents[1]


def _builder():
    spec = importlib.util.spec_from_file_location("build_api", ROOT / "docs" / "build_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_builds_and_documents_every_public_name_and_rule(tmp_path):
    _pages, problems = _builder().build(tmp_path)
    assert problems == []
    index = (tmp_path / "index.md").read_text(encoding="utf-8")
    for name in bp.__all__:
        if name != "__version__":
            assert f"\n## {name}\n" in index, name
    rules = (tmp_path / "rules.md").read_text(encoding="utf-8")
    for name in bp.list_rules():
        section = rules.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert "Models:" in section and "| option | default |" in section or "No options." in section
    models = (tmp_path / "models.md").read_text(encoding="utf-8")
    for name in bp.list_models():
        assert f"## {name}" in models
    assert "fb-resnet20-cifar10" in (tmp_path / "presets.md").read_text(encoding="utf-8")


def test_every_rule_class_has_its_own_docstring_naming_each_option():
    builder = _builder()
    for name in bp.list_rules():
        cls = RULES.get(name)
        assert builder._own_doc(cls), name
        text = builder._rule_docs(cls)
        for option in cls.defaults:
            assert re.search(rf"\b{re.escape(option)}\b", text), (name, option)


def test_missing_docstrings_and_internal_references_are_reported(monkeypatch):
    builder = _builder()

    class Undocumented(Rule):
        family = "feedback"
        defaults = {"secret": 1}

    class Internal(Rule):
        """Does X (spec §9).

        Options: none. Models: any.
        """

    monkeypatch.setitem(RULES._items, "zz-undocumented", Undocumented)
    monkeypatch.setitem(RULES._items, "zz-internal", Internal)
    problems = builder.Problems()
    builder.build_rules(problems)
    text = "\n".join(problems)
    assert "rule 'zz-undocumented'" in text and "no docstring" in text
    assert "option 'secret'" in text
    assert "rule 'zz-internal'" in text and "internal document" in text


def test_make_docs_command_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "build_api.py"), "--out",
                           str(tmp_path / "api")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == [
        "index.md", "losses.md", "models.md", "presets.md", "rules.md"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "docs/build_api.py" in makefile.split("\ndocs:", 1)[1].split("\n\n", 1)[0]


#: words that point readers to documents they do not have, or to the project's internal process
USER_TEXT_INTERNAL = re.compile(
    r"spec §|spec's|\bthe spec\b|design\.md|\bissues? #?\d+|\bthe issue'?s?\b|\[\?\]|seed paper|"
    r"acceptance (benchmark|criteria)", re.IGNORECASE)


def _help_texts(parser) -> list[str]:
    import argparse

    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                texts += _help_texts(sub)
    return texts


def test_readme_help_texts_and_benchmark_scripts_speak_to_users():
    from bioplausible.cli.app import build_parser

    found = []
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found += [("README.md", m.group(0)) for m in USER_TEXT_INTERNAL.finditer(readme)]
    for text in _help_texts(build_parser()):
        found += [("bioplausible --help", m.group(0)) for m in USER_TEXT_INTERNAL.finditer(text)]
    for script in sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "examples").glob("*.py")):
        text = script.read_text(encoding="utf-8")
        found += [(script.name, m.group(0)) for m in USER_TEXT_INTERNAL.finditer(text)]
    assert found == []
