"""Sphinx configuration for fastserver's reference documentation.

Build (from the checkout root, with ``pip install -e '.[docs]'``)::

    sphinx-build -W -b html docs docs/_build/html      # warnings are errors
    sphinx-build -W -b doctest docs docs/_build/doctest  # run the examples

autodoc imports the installed (or in-place built) fastserver, so the
reference shows the package a user gets, on whichever core it selects.
"""

import os
import sys

# The checkout first, so that an in-place build (pip install -e .) is the
# one documented, not some other installed copy.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import fastserver  # noqa: E402

project = "fastserver"
author = "The fastserver developers"
copyright = "2026, The fastserver developers"
# The one place the version lives: fastserver.__version__.
release = fastserver.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "fastserver %s" % release

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}

# No intersphinx: the build must not need the network (CI, offline
# contributors). References to the stdlib are plain links in the text.
