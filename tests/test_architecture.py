"""The import rules of docs/architecture.md, checked on the source: every `import` in a module, at its top or inside
a function, names only what the module's layer may import. A move that breaks a layer fails here, not in a
user's kernel without torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mvlm_magic"
HEAVY = ("torch", "transformers", "nncf", "safetensors", "huggingface_hub")  # the export extra

ABOVE_STORE = ("mvlm_magic.runtime", "mvlm_magic.ops", "mvlm_magic.model", "mvlm_magic.export", "mvlm_magic.notebook",
               "mvlm_magic.widgets", "mvlm_magic.inspect", "mvlm_magic.demo", "mvlm_magic.loader", "mvlm_magic.compare",
               "mvlm_magic.serve", "mvlm_magic.cli")

# the command line and the server: front ends that nothing of ours below them imports
FRONT_ENDS = ("mvlm_magic.cli", "mvlm_magic.serve")

# layer (a module or package of ours) -> what its modules must not import: our modules, or third-party packages.
# Read it with docs/architecture.md's table; the first matching prefix (longest first) is a module's layer.
FORBIDDEN = {
    "mvlm_magic.errors": ("mvlm_magic.",),
    "mvlm_magic.store": (*ABOVE_STORE, "openvino", *HEAVY),
    # shared by the widgets, the magics and the terminal, and imported by `%load_ext`: plain Python
    "mvlm_magic.printing": (*ABOVE_STORE, "openvino", "numpy", "PIL", "ipywidgets", *HEAVY),
    "mvlm_magic.pictures": (*ABOVE_STORE, "openvino", "numpy", "PIL", "ipywidgets", *HEAVY),
    # a saved notebook made to read without its kernel: JSON in, JSON out (the terminal's `mvlm handout`)
    "mvlm_magic.handout": (*ABOVE_STORE, "openvino", "numpy", "PIL", "ipywidgets", "IPython", *HEAVY),
    "mvlm_magic.runtime": ("mvlm_magic.model", "mvlm_magic.export", "mvlm_magic.notebook", "mvlm_magic.widgets",
                           "mvlm_magic.inspect",
                           "mvlm_magic.demo", "mvlm_magic.loader", *FRONT_ENDS, "IPython", "ipywidgets", *HEAVY),
    "mvlm_magic.ops": ("mvlm_magic.model", "mvlm_magic.export", "mvlm_magic.notebook", "mvlm_magic.widgets",
                       "mvlm_magic.demo", "mvlm_magic.loader", *FRONT_ENDS, "IPython", "ipywidgets", *HEAVY),
    "mvlm_magic.model": ("mvlm_magic.export", "mvlm_magic.notebook", "mvlm_magic.widgets", "mvlm_magic.demo",
                         "mvlm_magic.loader", *FRONT_ENDS, "mvlm_magic.ops", "openvino", "IPython", "ipywidgets"),
    "mvlm_magic.export": ("mvlm_magic.notebook", "mvlm_magic.widgets", "mvlm_magic.demo", "mvlm_magic.loader",
                          *FRONT_ENDS, "mvlm_magic.ops", "IPython", "ipywidgets"),
    "mvlm_magic.widgets": ("mvlm_magic.model", "mvlm_magic.export", "mvlm_magic.ops", "mvlm_magic.runtime.engine",
                           "mvlm_magic.runtime.chat", "mvlm_magic.notebook", "mvlm_magic.inspect", *FRONT_ENDS,
                           "openvino", *HEAVY),
    # what the model sees and decides, shown to a class: runtime facts drawn with the widgets' pieces, torch-free
    "mvlm_magic.inspect": ("mvlm_magic.model", "mvlm_magic.export", "mvlm_magic.ops", "mvlm_magic.notebook",
                           "mvlm_magic.demo", "mvlm_magic.loader", *FRONT_ENDS, "openvino", "IPython", *HEAVY),
    "mvlm_magic.notebook": ("mvlm_magic.model", "mvlm_magic.ops", *FRONT_ENDS, *HEAVY),
    "mvlm_magic.demo": ("mvlm_magic.notebook", "mvlm_magic.widgets", *FRONT_ENDS, "IPython", "ipywidgets"),
    # weight formats side by side: model name -> engines (through the loader) -> a table; no front end of its own
    "mvlm_magic.compare": ("mvlm_magic.notebook", "mvlm_magic.widgets", "mvlm_magic.inspect", *FRONT_ENDS,
                           "IPython", "ipywidgets", *HEAVY),
    # the OpenAI-compatible server: requests -> the runtime's chats, one engine, no notebook and no torch
    "mvlm_magic.serve": ("mvlm_magic.notebook", "mvlm_magic.widgets", "mvlm_magic.inspect", "mvlm_magic.compare",
                         "mvlm_magic.model", "mvlm_magic.ops", "mvlm_magic.cli", "IPython", "ipywidgets", *HEAVY),
    "mvlm_magic.cli": ("mvlm_magic.notebook", "mvlm_magic.widgets", "IPython", "ipywidgets", *HEAVY),
}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module name an import statement in `path` names, relative imports resolved."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names |= {f"{base}.{alias.name}" for alias in node.names} | {base}
    return names


def layer(name: str) -> str | None:
    matches = [prefix for prefix in FORBIDDEN if name == prefix or name.startswith(prefix + ".")]
    return max(matches, key=len) if matches else None


def names(name: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_what_its_layer_may(path):
    own = layer(module_name(path))
    if own is None:
        return  # the top-level glue (loader, __init__) may import any layer, lazily
    bad = sorted(n for n in imported(path) for f in FORBIDDEN[own] if names(n, f) and not names(n, own))
    assert not bad, f"{module_name(path)} ({own}) imports {bad}; see docs/architecture.md"


def test_the_rules_cover_every_package_and_module_of_the_tree():
    glue = {"mvlm_magic", "mvlm_magic.loader"}  # the extension's entry and model name -> engine: any layer, lazily
    uncovered = {module_name(p) for p in modules() if layer(module_name(p)) is None} - glue
    assert not uncovered, f"add these to FORBIDDEN and to docs/architecture.md: {sorted(uncovered)}"
