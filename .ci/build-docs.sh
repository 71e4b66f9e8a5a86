#!/usr/bin/env bash
# Build the documentation with every warning an error, then run its doctests: the examples in
# the API docstrings and in the pages. Needs the "docs" extra (pip install -e ".[docs]").
# Offline by default; AUTOENC_DOCS_INTERSPHINX=1 links against the full remote inventories.
#
# Usage: .ci/build-docs.sh            (PYTHON overrides the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"

# sphinx-mathjax-offline is imported by its distribution name, which has hyphens.
check='import importlib.util, sphinx, furo, sphinx_autodoc_typehints
assert importlib.util.find_spec("sphinx-mathjax-offline")'
if ! "$python" -c "$check" 2>/dev/null; then
    echo "build-docs: Sphinx, furo, sphinx-autodoc-typehints or sphinx-mathjax-offline is missing;" \
        'install the docs extra: pip install -e ".[docs]"' >&2
    exit 1
fi

# A fresh build each time, so a warning in a page that did not change is not hidden by the cache.
rm -rf docs/_build/html docs/_build/doctest

echo "== sphinx html (-W)"
"$python" -m sphinx -W --keep-going -b html docs docs/_build/html

# Offline the pages must still work: no page may load a script or a stylesheet from another
# host (a CDN MathJax leaves every formula as raw TeX). MathJax is served from _static instead.
echo "== no remote scripts or stylesheets"
remote_tag='<script[^>]*src="(https?:)?//[^"]*"'
remote_tag+='|<link[^>]*rel="stylesheet"[^>]*href="(https?:)?//[^"]*"'
remote_tag+='|<link[^>]*href="(https?:)?//[^"]*"[^>]*rel="stylesheet"'
remote=$(grep -rEo --include="*.html" "$remote_tag" docs/_build/html) || [ $? -eq 1 ]
if [ -n "$remote" ]; then
    echo "build-docs: pages load remote files, which fail offline:" >&2
    printf '%s\n' "$remote" \
        | sed -E 's#^([^:]*):.*(src|href)="((https?:)?//[^"]*)".*#  \1: \3#' | sort -u >&2
    exit 1
fi

echo "== sphinx doctest"
"$python" -m sphinx -W -b doctest docs docs/_build/doctest

# The doctest builder fails on a failing example; also fail if it ran none (a broken setup).
summary=docs/_build/doctest/output.txt
ran=$(awk '/^Doctest summary/ {found = 1} found && $2 == "tests" {print $1; exit}' "$summary")
if [ -z "$ran" ] || [ "$ran" -eq 0 ]; then
    echo "build-docs: the doctest builder ran no examples (see $summary)" >&2
    exit 1
fi
echo "build-docs: html built, $ran doctest examples passed"
