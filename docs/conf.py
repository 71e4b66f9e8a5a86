"""Sphinx configuration for the autoenc documentation.

Build (what .ci/build-docs.sh runs)::

    sphinx-build -W --keep-going -b html docs docs/_build/html
    sphinx-build -W -b doctest docs docs/_build/doctest

The build works offline: intersphinx reads the inventories in ``docs/_inventories``. Set
``AUTOENC_DOCS_INTERSPHINX=1`` to use the full remote inventories instead (needs internet).
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import re
import warnings
import zlib
from pathlib import Path
from typing import Any, NamedTuple

from docutils import nodes
from sphinx import addnodes
from torch import nn

import autoenc

_HERE = Path(__file__).resolve().parent

# -- Project -------------------------------------------------------------------------------------

project = "autoenc"
author = "autoenc developers"
copyright = "autoenc developers"
release = autoenc.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # before sphinx_autodoc_typehints, which post-processes its fields
    "sphinx_autodoc_typehints",
    "sphinx.ext.intersphinx",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    # Serves MathJax 3 from the built docs' _static/mathjax (it sets mathjax_path), so formulas
    # render offline and no page loads a script from a CDN; .ci/build-docs.sh checks the latter.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build", "_inventories", "Thumbs.db", ".DS_Store"]
# Every cross-reference must resolve: a renamed function or a typo in :func:`...` fails -W.
nitpicky = True
nitpick_ignore_regex = [
    # Private helpers (``_reduce``) are not documented, so a reference to one renders as code.
    (r"py:.*", r"(.*\.)?_[A-Za-z]\w*"),
]

# -- autodoc, napoleon, type hints ---------------------------------------------------------------

autodoc_member_order = "bysource"
autoclass_content = "class"  # the Args of a class live in its class docstring
autodoc_typehints = "none"  # sphinx_autodoc_typehints renders them into the parameter lists
add_module_names = False
python_use_unqualified_type_names = True

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

typehints_use_signature = False
typehints_use_signature_return = False
typehints_document_rtype = True
always_use_bars_union = True
typehints_defaults = None
# sphinx_autodoc_typehints 3.6 calls a Sphinx API deprecated in Sphinx 9, once per docstring.
warnings.filterwarnings("ignore", message=".*set_application.*is deprecated")

# -- intersphinx ---------------------------------------------------------------------------------

# name -> (documentation URL, plain-text inventory in _inventories/ or None for Python's)
_INVENTORIES = {
    "python": ("https://docs.python.org/3", None),
    "torch": ("https://docs.pytorch.org/docs/stable", "pytorch.txt"),
    "torchvision": ("https://docs.pytorch.org/vision/stable", "torchvision.txt"),
    "matplotlib": ("https://matplotlib.org/stable", "matplotlib.txt"),
}


def _compile_inventory(source: Path, target: Path, *, project_name: str) -> Path:
    """Write the plain-text inventory ``source`` as a version-2 ``objects.inv`` at ``target``."""
    lines = [
        line.strip()
        for line in source.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project_name}\n"
        "# Version: stable\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    body = zlib.compress(("\n".join(lines) + "\n").encode("utf-8"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(header.encode("utf-8") + body)
    return target


def _local_inventory(name: str, text: str | None) -> str:
    if text is None:
        # The objects.inv of Debian's python3.11-doc package (the Python 3.11 documentation).
        return str(_HERE / "_inventories" / "python.inv")
    # The others publish their inventories in no package: partial ones, compiled from text.
    source = _HERE / "_inventories" / text
    target = _HERE / "_build" / "_inventories" / f"{name}.inv"
    return str(_compile_inventory(source, target, project_name=name))


if os.environ.get("AUTOENC_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {name: (url, None) for name, (url, _) in _INVENTORIES.items()}
else:
    intersphinx_mapping = {
        name: (url, _local_inventory(name, text)) for name, (url, text) in _INVENTORIES.items()
    }

# -- doctest -------------------------------------------------------------------------------------

# Docstring examples are written as if inside their module: give each test every public name
# of every public module (no two modules export different objects under one name).
_star_imports = "\n".join(
    f"from autoenc.{module.name} import *"
    for module in pkgutil.iter_modules(autoenc.__path__)
    if not module.name.startswith("_")
)
doctest_global_setup = f"""
import math

import torch
from torch import nn

import autoenc
from autoenc import *
{_star_imports}

torch.manual_seed(0)
"""
# Sphinx's default also has IGNORE_EXCEPTION_DETAIL, which would let an example's error message
# drift from the real one unnoticed; ELLIPSIS still allows "..." inside a message.
doctest_default_flags = doctest.ELLIPSIS | doctest.DONT_ACCEPT_TRUE_FOR_1

# -- HTML ----------------------------------------------------------------------------------------

html_theme = "furo"
html_title = f"autoenc {release}"
html_static_path: list[str] = []
html_theme_options = {"navigation_with_keys": True}

# -- Cross-reference aliases ---------------------------------------------------------------------


def _lookup(path: str) -> Any:
    """Import the object at dotted ``path``, or return ``None``."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


_TORCH_NAMESPACES = ("torch", "torch.nn", "torch.optim", "torch.utils.data", "torch.distributions")


def _public_torch_name(target: str) -> str | None:
    """``torch.nn.modules.module.Module`` -> ``torch.nn.Module`` (how PyTorch documents it)."""
    obj = _lookup(target)
    name = getattr(obj, "__name__", None)
    if obj is None or name is None:
        return None
    for namespace in _TORCH_NAMESPACES:
        if getattr(importlib.import_module(namespace), name, None) is obj:
            return f"{namespace}.{name}"
    return None


def _defining_autoenc_name(target: str) -> str | None:
    """``autoenc.GaussianVAE.loss`` -> ``autoenc.models.GaussianVAE.loss``, its documented name:
    the shortest public package path that holds the object (the API pages document packages)."""
    parts = target.split(".")
    if len(parts) < 2 or parts[1] not in autoenc.__all__:
        return None
    obj = getattr(autoenc, parts[1])
    module = getattr(obj, "__module__", None)
    if not module or module == "autoenc" or not module.startswith("autoenc."):
        return None
    pieces = module.split(".")
    for i in range(2, len(pieces) + 1):
        prefix = ".".join(pieces[:i])
        if getattr(importlib.import_module(prefix), parts[1], None) is obj:
            return ".".join([prefix, *parts[1:]])
    return None


def _resolve_alias(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve references to re-exported names (``autoenc.fit``) and private torch paths."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if target.startswith("autoenc."):
        real = _defining_autoenc_name(target)
        if real is None:
            return None
        domain = env.get_domain("py")
        return domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], real, node, contnode
        )
    if target.startswith("torch."):
        public = _public_torch_name(target)
        if public is not None and public != target:
            node["reftarget"] = public  # intersphinx, which runs next, resolves the public name
    return None


def _drop_inherited_torch_docstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Blank PyTorch's generic text under our overrides that have no docstring of their own.

    autodoc inherits docstrings, so an undocumented ``forward`` would show ``nn.Module.forward``'s
    text; the method stays listed (and linkable), with its signature only.
    """
    short = name.rsplit(".", 1)[-1]
    if what == "method" and getattr(obj, "__doc__", None) is None and hasattr(nn.Module, short):
        lines.clear()


# Bases that say nothing the page does not: every class derives from ``object``, and a NamedTuple's
# docstring says it unpacks. Sphinx writes "Bases:" even for an empty list, hence the next handler.
_PLAIN_BASES = (object, tuple, NamedTuple)


def _drop_plain_bases(app: Any, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    """Hide private mixins (``_ReconMixin``), ``object``, ``tuple`` and ``NamedTuple``."""
    bases[:] = [
        base
        for base in bases
        if not any(base is plain for plain in _PLAIN_BASES)
        and not getattr(base, "__name__", "").startswith("_")
    ]


def _drop_empty_bases_line(app: Any, doctree: Any) -> None:
    """Remove the "Bases:" line that Sphinx writes for a class whose bases were all dropped."""
    for content in doctree.findall(addnodes.desc_content):
        for child in list(content.children):
            if isinstance(child, nodes.paragraph) and child.astext().strip() == "Bases:":
                content.remove(child)


_FIELD_ALIAS = re.compile(r"Alias for field number \d+")


def _skip_namedtuple_fields(
    app: Any, what: str, name: str, obj: Any, skip: bool, options: Any
) -> bool | None:
    """Leave out NamedTuple fields, whose only docstring is "Alias for field number N".

    They are documented as the dataclass fields are: in the class docstring's Attributes section.
    """
    if _FIELD_ALIAS.fullmatch((getattr(obj, "__doc__", None) or "").strip()):
        return True
    return None


def setup(app: Any) -> dict[str, Any]:
    app.connect("missing-reference", _resolve_alias, priority=400)
    app.connect("autodoc-process-docstring", _drop_inherited_torch_docstring)
    app.connect("autodoc-process-bases", _drop_plain_bases)
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
    app.connect("doctree-read", _drop_empty_bases_line)
    return {"parallel_read_safe": True}
