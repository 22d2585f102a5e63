"""An import-linter contract type for the compiled modules (pyproject.toml, [tool.importlinter]).

Grimp builds its graph from ``.py`` files, so the Cython extensions (``speeddata._relay``,
``_columns``...) are not in it, and every import of them is dropped. ``compiled_protected``
puts them back, found in the source of every module of the package, then checks as
import-linter's own ``protected`` type: the compiled modules are imported only by their
allowed importers (their Python owners).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from importlinter.contracts.protected import ProtectedContract


def _source(module: str, root: str, root_dir: Path) -> Path | None:
    rel = module.split(".")[1:]
    for path in (root_dir.joinpath(*rel, "__init__.py"), root_dir.joinpath(*rel[:-1],
                                                                          rel[-1] + ".py")
                 if rel else root_dir / "__init__.py"):
        if path.is_file():
            return path
    return None


def compiled_imports(graph, protected: set[str]):
    """(importer, imported, line number, line) of each import of a ``protected`` module in
    the source of the modules of ``graph``."""
    found = []
    roots = {m.split(".")[0] for m in protected}
    for root in roots:
        spec = importlib.util.find_spec(root)
        root_dir = Path(next(iter(spec.submodule_search_locations)))
        for module in sorted(m for m in graph.modules if m.split(".")[0] == root):
            path = _source(module, root, root_dir)
            if path is None:
                continue
            text = path.read_text()
            lines = text.splitlines()
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            for node in ast.walk(ast.parse(text)):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = package.split(".")
                    if node.level:
                        base = base[: len(base) - node.level + 1]
                    else:
                        base = []
                    prefix = ".".join(base + ([node.module] if node.module else []))
                    names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
                for name in names:
                    if name in protected:
                        found.append((module, name, node.lineno, lines[node.lineno - 1].strip()))
    return found


class CompiledProtectedContract(ProtectedContract):
    """``protected``, with the compiled modules and the imports of them in the graph."""

    type_name = "compiled_protected"

    def check(self, graph, verbose: bool):
        protected = {str(e.expression) for e in self.protected_modules}  # type: ignore
        for importer, imported, line_number, line in compiled_imports(graph, protected):
            graph.add_import(importer=importer, imported=imported, line_number=line_number,
                             line_contents=line)
        for name in protected:
            if name not in graph.modules:
                graph.add_module(name)  # imported nowhere: nothing to break
        return super().check(graph, verbose)
