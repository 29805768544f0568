"""Build the API reference of ``bioplausible`` from its docstrings, as Markdown (``make docs``).

Writes ``index.md`` (every public name of the package with its signature and docstring),
``rules.md`` (every registered learning rule: paper, family, the update it computes, its options
with their defaults, the models it supports), ``models.md``, ``losses.md`` and ``presets.md``
into the output folder (default ``docs/api``).

The build fails (exit status 1, one line per problem) when a public name or a rule has no
docstring, when a rule's docstring leaves out one of its options or says nothing about the
models it trains, or when a docstring refers to a document that is not part of the project.

    python docs/build_api.py [--out docs/api] [--check]    # --check: build in memory, write nothing
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: wording that points to documents readers do not have
INTERNAL = re.compile(r"spec §|spec's|design\.md|\bissue \d+|\[\?\]|the issue's", re.I)


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__) if isinstance(getattr(obj, "__doc__", None), str) else ""


def _own_doc(cls: type) -> str:
    """The docstring written on ``cls`` itself (not inherited)."""
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def _public_methods(cls: type) -> list[tuple[str, Any]]:
    out = []
    for name, value in cls.__dict__.items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            out.append((name, value))
    return out


def _block(text: str) -> str:
    """A docstring as Markdown: reST literal markers become code spans, ``::`` blocks code."""
    text = text.replace("``", "`")
    text = re.sub(r":(?:func|class|meth|mod|attr|data|exc):`~?([^`]+)`", r"`\1`", text)
    lines, out, in_code = text.splitlines(), [], False
    for i, line in enumerate(lines):
        if in_code and line and not line.startswith((" ", "\t")):
            out.append("```")
            in_code = False
        if line.rstrip().endswith("::") and not in_code:
            out.append(line.rstrip()[:-1] if not line.rstrip().endswith(" ::") else line.rstrip()[:-3])
            out.append("")
            out.append("```")
            in_code = True
            continue
        out.append(line[4:] if in_code and line.startswith("    ") else line)
    if in_code:
        out.append("```")
    return "\n".join(out).strip()


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


class Problems(list):
    def need_doc(self, where: str, doc: str) -> None:
        if not doc.strip():
            self.append(f"{where}: no docstring")
        elif INTERNAL.search(doc):
            self.append(f"{where}: docstring refers to an internal document "
                        f"({INTERNAL.search(doc).group(0)!r})")


# ----------------------------------------------------------------------------- public names
def build_index(problems: Problems) -> str:
    import bioplausible as bp

    names = [n for n in bp.__all__ if not n.startswith("_")]
    out = ["# API reference", "",
           f"`bioplausible` {bp.__version__}: every public name of the package "
           "(`import bioplausible as bp; bp.NAME`), generated from the docstrings by "
           "`make docs` (`python docs/build_api.py`). The learning rules are in "
           "[rules.md](rules.md), models in [models.md](models.md), losses in "
           "[losses.md](losses.md), presets in [presets.md](presets.md); the notation in "
           "[../notation.md](../notation.md).", "",
           "| name | kind | summary |", "|---|---|---|"]
    body: list[str] = []
    for name in names:
        obj = getattr(bp, name)
        kind = ("class" if inspect.isclass(obj) else "function" if callable(obj) and
                not isinstance(obj, type(bp.RULES)) else type(obj).__name__)
        doc = _doc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj)) else _doc(type(obj))
        if name == "RULES":
            doc = ("The registry of learning rules: rule name → Rule subclass "
                   "(`bp.RULES.names()`, `bp.RULES.get(name)`); filled by `@bp.register(name)`.\n\n"
                   + _doc(type(obj)))
        if name != "__version__":
            problems.need_doc(f"bioplausible.{name}", doc)
        first = _block(doc.split("\n\n")[0]).replace("\n", " ") if doc else ""
        out.append(f"| [`{name}`](#{name.lower()}) | {kind} | {_cell(first)} |")
        module = getattr(obj, "__module__", None) or "bioplausible"
        sig = _signature(obj) if callable(obj) and kind in ("class", "function") else ""
        body += ["", f"## {name}", "", f"`{module}.{getattr(obj, '__qualname__', name)}{sig}`"
                 if kind in ("class", "function") else f"`bioplausible.{name}`", "", _block(doc)]
        if inspect.isclass(obj) and obj.__module__.startswith("bioplausible"):
            for mname, member in _public_methods(obj):
                mdoc = _doc(member.fget if isinstance(member, property) else member)
                if not mdoc:
                    continue
                msig = "" if isinstance(member, property) else _signature(member)
                body += ["", f"### {name}.{mname}", "", f"`{mname}{msig}`", "", _block(mdoc)]
    return "\n".join(out + body) + "\n"


# ----------------------------------------------------------------------------------- rules
def _rule_docs(cls: type) -> str:
    """Docstrings of ``cls`` and its rule base classes (options may be documented on a base)."""
    from bioplausible.core.rule import Rule

    return "\n".join(_own_doc(k) for k in cls.__mro__ if issubclass(k, Rule) and k is not Rule)


def build_rules(problems: Problems) -> str:
    import bioplausible as bp
    from bioplausible._registry import RULES

    out = ["# Learning rules", "",
           "Every rule registered in `bioplausible` (`bp.make(NAME, **options)`, "
           "`--rule NAME`, `--set rule.OPTION=VALUE`). For each: the paper, the family "
           "(*exact*: the true gradient, or BP with noise; *feedback*: a converted model whose "
           "backward pass uses the rule's feedback tensors; *circuit*: the rule runs the "
           "network's dynamics in its own `train_step`), the update it computes, its options "
           "with their defaults and the models it trains. Notation: [../notation.md](../notation.md).",
           "", "| rule | family | paper | update |", "|---|---|---|---|"]
    body: list[str] = []
    for name in bp.list_rules():
        cls = RULES.get(name)
        doc = _own_doc(cls)
        problems.need_doc(f"rule {name!r} ({cls.__module__}.{cls.__qualname__})", doc)
        everything = _rule_docs(cls)
        for option in cls.defaults:
            if not re.search(rf"``{re.escape(option)}``|`{re.escape(option)}`|\b{re.escape(option)}\b",
                             everything):
                problems.append(f"rule {name!r}: option {option!r} is not described in its docstring")
        if doc and "Models:" not in everything:
            problems.append(f"rule {name!r}: the docstring does not say which models it trains "
                            "(a 'Models:' paragraph)")
        out.append(f"| [`{name}`](#{name}) | {cls.family} | {cls.paper} | "
                   f"{_cell(cls.summary)} |")
        body += ["", f"## {name}", "",
                 f"`{cls.__module__}.{cls.__qualname__}` — family *{cls.family}*; {cls.paper}.", "",
                 f"Update: {cls.summary}.", "", _block(doc)]
        bases = [k for k in cls.__mro__[1:] if k.__module__.startswith("bioplausible.rules")
                 and k.__name__ != "Rule" and _own_doc(k) and k.__module__ != "bioplausible.core.rule"]
        for base in bases:
            body += ["", f"*From {base.__qualname__}:*", "", _block(_own_doc(base))]
        if cls.defaults:
            body += ["", "| option | default |", "|---|---|"]
            body += [f"| `{k}` | `{v!r}` |" for k, v in cls.defaults.items()]
        else:
            body += ["", "No options."]
        if cls.updates_forward:
            body += ["", "Applies its forward-weight updates itself (`updates_forward`): the "
                         "optimizer takes only `lr`."]
        if cls.phases:
            body += ["", f"Learning phases, stepped in order within a batch: {list(cls.phases)}."]
    return "\n".join(out + body) + "\n"


# ----------------------------------------------------------------- models, losses, presets
def build_models(problems: Problems) -> str:
    from bioplausible.models import MODELS

    out = ["# Models", "", "`bp.build_model(SPEC, input_shape=..., num_classes=..., **options)`, "
           "`--model SPEC`; options after commas (`resnet20,batchnorm=false`). Any other "
           "`nn.Module` by import path: `pkg.module:callable`.", ""]
    for name, factory in MODELS.items():
        doc = _doc(factory)
        built = None
        if not doc:  # a registry function without a docstring: document the class it builds
            try:
                import torch  # noqa: F401

                built = type(factory(None if name != "mlp" else "4-3", input_shape=None,
                                     num_classes=None))
            except Exception:  # noqa: BLE001 - a factory that needs arguments
                built = None
            doc = _doc(built) if built is not None else ""
        problems.need_doc(f"model {name!r}", doc)
        out += [f"## {name}", "", _block(doc), ""]
    return "\n".join(out)


def build_losses(problems: Problems) -> str:
    import bioplausible as bp

    out = ["# Losses", "", "`bp.get_loss(NAME)`, `--loss NAME`. The batch convention is part of "
           "the name, since the papers differ.", "", "| loss | description |", "|---|---|"]
    for name in bp.list_losses():
        text = str(getattr(bp.get_loss(name), "description", "") or "")
        problems.need_doc(f"loss {name!r}", text)
        out.append(f"| `{name}` | {_cell(' '.join(text.split()))} |")
    return "\n".join(out) + "\n"


def build_presets(problems: Problems) -> str:
    out = ["# Presets", "", "The papers' experiments: `bioplausible reproduce NAME --scale quick|full`. "
           "Each is a YAML file in `src/bioplausible/experiments/`; its header comment states the "
           "paper's setting, our differences and where the paper's numbers come from.", "",
           "| preset | title | paper | scales |", "|---|---|---|---|"]
    from bioplausible.experiments.presets import _all

    presets = _all()  # parse every preset file once
    for name in sorted(presets):
        p = presets[name]
        if not p.title:
            problems.append(f"preset {name!r}: no title")
        out.append(f"| `{name}` | {p.title} | {p.paper} | {', '.join(p.scales)} |")
    return "\n".join(out) + "\n"


PAGES: dict[str, Callable[[Problems], str]] = {
    "index.md": build_index, "rules.md": build_rules, "models.md": build_models,
    "losses.md": build_losses, "presets.md": build_presets,
}


def build(out: Path | None) -> tuple[dict[str, str], list[str]]:
    """Build every page; write them under ``out`` unless it is ``None``. Returns (pages, problems)."""
    problems = Problems()
    pages = {name: make(problems) for name, make in PAGES.items()}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in pages.items():
            (out / name).write_text(text, encoding="utf-8")
    return pages, list(problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "api"),
                        help="output folder (default: docs/api)")
    parser.add_argument("--check", action="store_true", help="build in memory only, write nothing")
    args = parser.parse_args(argv)
    pages, problems = build(None if args.check else Path(args.out))
    for problem in problems:
        print(f"docs: {problem}", file=sys.stderr)
    if problems:
        print(f"docs: {len(problems)} problem(s); the reference is incomplete", file=sys.stderr)
        return 1
    where = "checked" if args.check else f"written to {args.out}"
    print(f"API reference: {len(pages)} pages {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
