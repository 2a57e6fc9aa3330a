"""pyproject lists the packages by hand (the widgets folder is remapped); a new subpackage must not be left out."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_code_folder_is_a_listed_package():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {folder.parent for folder in (ROOT / "mvlm_magic").rglob("*.py") if "__pycache__" not in folder.parts}
    expected = {".".join(folder.relative_to(ROOT).parts) for folder in folders}
    assert expected - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert setuptools["package-dir"] == {"mvlm_magic.widgets": "widgets"} and "mvlm_magic.widgets" in listed
    assert (ROOT / "widgets" / "__init__.py").is_file()
