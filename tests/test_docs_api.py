"""The API reference in docs/api/ documents every public name and every public module.

These checks read the .rst sources; building the pages (and failing on any warning) is
.ci/build-docs.sh's job.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import autoenc

ROOT = Path(__file__).resolve().parents[1]
API_DIR = ROOT / "docs" / "api"
PACKAGE_DIR = ROOT / "src" / "autoenc"

_DIRECTIVE = re.compile(r"^\.\.\s+([\w:-]+)::\s*(\S+)\s*$")
_OPTION = re.compile(r"^\s+:([\w-]+):")


@dataclass
class Directive:
    kind: str  # "automodule", "autoclass", "py:data", ...
    target: str  # as written
    module: str | None  # the current module where it appears
    options: set[str] = field(default_factory=set)
    page: str = ""


def _parse(path: Path) -> list[Directive]:
    """The directives of one page, with their options and the module they are relative to."""
    directives: list[Directive] = []
    module: str | None = None
    current: Directive | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _DIRECTIVE.match(line)
        if match:
            kind, target = match.groups()
            if kind in ("currentmodule", "py:currentmodule", "module", "py:module"):
                module, current = target, None
                continue
            current = Directive(kind, target, module, page=path.name)
            directives.append(current)
            if kind == "automodule":
                module = target
            continue
        option = _OPTION.match(line)
        if option and current is not None:
            current.options.add(option.group(1))
        elif line.strip() and not line.startswith(" "):
            current = None
    return directives


def _api_directives() -> list[Directive]:
    pages = sorted(API_DIR.glob("*.rst"))
    assert pages, f"no API pages found in {API_DIR}"
    return [d for page in pages for d in _parse(page)]


def _resolve(directive: Directive) -> object:
    """The object an ``auto*``/``py:*`` directive documents (``None`` when it does not import)."""
    candidates = [directive.target]
    if directive.module and not directive.target.startswith(directive.module + "."):
        candidates.insert(0, f"{directive.module}.{directive.target}")
    for dotted in candidates:
        module_name, _, attr = dotted.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError):
            continue
    return None


def _members_documented_by_automodule(directive: Directive) -> dict[str, object]:
    """What ``.. automodule:: M`` with ``:members:`` documents: the documented names in __all__.

    autodoc takes the members of a module from its ``__all__`` and, without
    ``:undoc-members:``, skips functions and classes that have no docstring.
    """
    module = importlib.import_module(directive.target)
    names = getattr(module, "__all__", None)
    assert names is not None, f"{directive.target} has no __all__; autodoc would guess its members"
    undoc = "undoc-members" in directive.options
    members = {}
    for name in names:
        obj = getattr(module, name)
        if callable(obj) and not undoc and not (obj.__doc__ or "").strip():
            continue
        members[name] = obj
    return members


def _documented_objects() -> list[tuple[str, object]]:
    """(page, object) for everything the API pages document."""
    documented: list[tuple[str, object]] = []
    for directive in _api_directives():
        if directive.kind == "automodule":
            if "members" in directive.options:
                for obj in _members_documented_by_automodule(directive).values():
                    documented.append((directive.page, obj))
        elif directive.kind.startswith(("auto", "py:")):
            obj = _resolve(directive)
            if obj is not None:
                documented.append((directive.page, obj))
    return documented


@pytest.mark.parametrize("name", [n for n in autoenc.__all__ if n != "__version__"])
def test_every_public_name_is_documented(name: str) -> None:
    obj = getattr(autoenc, name)
    pages = [page for page, documented in _documented_objects() if documented is obj]
    assert pages, (
        f"autoenc.{name} is in autoenc.__all__ but no page in docs/api/ documents it: add it to "
        f"the __all__ of its module ({getattr(obj, '__module__', '?')}, which an automodule with "
        ":members: documents), give it a docstring, or add an autodoc directive for it"
    )
    assert len(pages) == 1, f"autoenc.{name} is documented more than once: {pages}"


def test_version_is_documented() -> None:
    assert "__version__" in autoenc.__all__
    targets = {d.target for d in _api_directives() if d.kind in ("py:data", "autodata")}
    assert "autoenc.__version__" in targets


def test_overview_table_lists_every_public_name() -> None:
    """docs/api/index.rst links every name of ``autoenc.__all__`` as ``autoenc.<name>``."""
    text = (API_DIR / "index.rst").read_text(encoding="utf-8")
    linked = set(re.findall(r":(?:class|func|data|exc):`autoenc\.(\w+)`", text))
    missing = sorted(set(autoenc.__all__) - linked)
    extra = sorted(linked - set(autoenc.__all__))
    assert not missing, f"docs/api/index.rst does not list {missing}"
    assert not extra, f"docs/api/index.rst lists {extra}, which autoenc does not export"


def test_every_public_module_has_an_api_page() -> None:
    # the layers: top-level modules and packages (a package's page documents its __all__)
    modules = sorted(
        f"autoenc.{path.stem if path.suffix else path.name}"
        for path in PACKAGE_DIR.iterdir()
        if not path.name.startswith("_")
        and (path.suffix == ".py" or (path / "__init__.py").is_file())
    )
    assert "autoenc.models" in modules
    documented = {d.target for d in _api_directives() if d.kind == "automodule"}
    missing = [name for name in modules if name not in documented]
    assert not missing, (
        f"no page in docs/api/ documents {missing}: add docs/api/<module>.rst with "
        "'.. automodule:: <module>' and ':members:', and list it in docs/api/index.rst"
    )


def test_every_api_page_is_in_the_api_toctree() -> None:
    index = (API_DIR / "index.rst").read_text(encoding="utf-8")
    toctree = set(re.findall(r"^   (\w+)\s*$", index, flags=re.MULTILINE))
    pages = {path.stem for path in API_DIR.glob("*.rst")} - {"index"}
    assert pages <= toctree, f"API pages missing from the toctree: {sorted(pages - toctree)}"


def test_parser_sees_members_and_explicit_directives(tmp_path: Path) -> None:
    """The checks above rely on the parser: an automodule with and without :members:."""
    page = tmp_path / "page.rst"
    page.write_text(
        "Title\n=====\n\n"
        ".. automodule:: autoenc.functional\n   :members:\n\n"
        ".. automodule:: autoenc.models\n\n"
        ".. autofunction:: mlp\n",
        encoding="utf-8",
    )
    with_members, without_members, explicit = _parse(page)
    assert with_members.options == {"members"} and without_members.options == set()
    assert explicit.module == "autoenc.models"
    assert _resolve(explicit) is None  # autoenc.models has no mlp
    assert autoenc.reparameterize in _members_documented_by_automodule(with_members).values()
