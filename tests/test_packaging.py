"""The wheel holds every package of the tree (the file tree is the import tree) and the operations' C++ sources."""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_code_folder_is_a_package_the_wheel_finds():
    found = set(find_packages(str(ROOT), include=["mvlm_magic*"]))
    folders = {folder.parent for folder in (ROOT / "mvlm_magic").rglob("*.py") if "__pycache__" not in folder.parts}
    expected = {".".join(folder.relative_to(ROOT).parts) for folder in folders}
    assert expected - found == set(), "a folder of Python files without __init__.py is left out of the wheel"
    assert "mvlm_magic.widgets" in found
