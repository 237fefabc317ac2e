"""Architecture rules, checked on the source with ``ast``: no import circles between medlens modules, no task names
tested outside the task plug-ins, no private names borrowed across modules."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "medlens"

#: label kinds the readers produce: the data layer may name them too (a reader decides the kind of its labels)
KIND_NAMES = {"binary", "multiclass", "multilabel"}


def _task_names() -> set[str]:
    """Every registered task's name and the label kinds a task added itself: only its own folder may name them."""
    from medlens.tasks import list_kinds, list_tasks

    return set(list_tasks()) | (set(list_kinds()) - KIND_NAMES)


TASK_NAMES = _task_names()


# ------------------------------------------------------------------------------------------ the module graph
def module_files(src: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``src/<package>`` (``__init__`` names the package)."""
    out: dict[str, Path] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(modules: dict[str, Path], name: str) -> bool:
    return modules[name].name == "__init__.py"


def _resolve_from(modules: dict[str, Path], current: str, node: ast.ImportFrom) -> str | None:
    """The absolute module a ``from ... import`` names (relative imports resolved against ``current``)."""
    if node.level == 0:
        return node.module
    base = current.split(".")
    if not _is_package(modules, current):
        base = base[:-1]  # a plain module's ``.`` is its package
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_modules(modules: dict[str, Path], current: str, tree: ast.AST, package: str = PACKAGE) -> Iterator[tuple[str, int]]:
    """(module, line) for every import of a package module anywhere in ``tree`` (function bodies included).

    ``from a.b import c`` counts as an import of ``a.b.c`` when that is a module, else of ``a.b``.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                while name and name not in modules:  # ``import medlens.x.y`` of an attribute path: its longest module
                    name = name.rpartition(".")[0]
                if name:
                    yield name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_from(modules, current, node)
            if not target or not (target == package or target.startswith(package + ".")):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    yield sub, node.lineno
                elif target in modules:
                    yield target, node.lineno


def import_graph(src: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports (self-imports left out)."""
    modules = module_files(src, package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for dep, _ in imported_modules(modules, name, tree, package):
            if dep != name:
                graph[name].add(dep)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def test_no_import_circles():
    graph = import_graph(SRC)
    assert "medlens.tasks" in graph and "medlens.serve.state" in graph
    assert "medlens.tasks" in graph["medlens.serve.state"] or "medlens.inference" in graph["medlens.serve.state"]
    cycles = import_cycles(graph)
    assert not cycles, "import circles between medlens modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_the_cycle_finder_sees_circles_through_functions_and_relative_imports(tmp_path):
    src = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.sub import b\n",                       # a -> pkg.sub.b (a module)
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "def f():\n    from ..c import thing\n",     # b -> pkg.c, inside a function, relative
        "pkg/c.py": "import pkg.a\nthing = 1\n",                      # c -> a: the circle a -> b -> c -> a
        "pkg/d.py": "from pkg import a\nfrom . import e\n",          # d -> a, d -> e: no circle
        "pkg/e.py": "from pkg.c import thing\n",
        "pkg/f.py": "import os\nfrom .g import x\n",                  # f <-> g: a second circle
        "pkg/g.py": "x = 1\ndef h():\n    import pkg.f\n",
    })
    graph = import_graph(src, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.c"}
    assert graph["pkg.d"] == {"pkg.a", "pkg.e"}
    assert graph["pkg.f"] == {"pkg.g"}
    assert import_cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"], ["pkg.f", "pkg.g"]]
    # without the back edges there is none
    (src / "pkg/c.py").write_text("thing = 1\n")
    (src / "pkg/g.py").write_text("x = 1\n")
    assert import_cycles(import_graph(src, "pkg")) == []


# ------------------------------------------------------------------------------------------ task names
def _constants(node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for elt in node.elts:
            yield from _constants(elt)


def task_name_comparisons(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) of every comparison in ``path`` against one of ``names`` (``==``, ``!=``, ``in`` a tuple/list/set, ...)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                hits += [(node.lineno, s) for s in _constants(operand) if s in names]
    return sorted(set(hits))


def _rel(path: Path) -> str:
    return path.relative_to(SRC / PACKAGE).as_posix()


def _allowed_task_names(rel: str) -> bool:
    return rel.startswith("tasks/")


def _allowed_kind_names(rel: str) -> bool:
    return _allowed_task_names(rel) or rel.startswith("data/")


def test_task_names_are_compared_only_inside_the_task_plugins():
    offenders = []
    for path in module_files(SRC).values():
        rel = _rel(path)
        names = (set() if _allowed_task_names(rel) else TASK_NAMES) | (set() if _allowed_kind_names(rel) else KIND_NAMES)
        if names:
            offenders += [f"src/{PACKAGE}/{rel}:{line}: compares with {name!r}" for line, name in task_name_comparisons(path, names)]
    assert not offenders, "ask the task object (medlens.tasks.task_of) instead of testing a name:\n" + "\n".join(offenders)


def task_packages() -> set[str]:
    """The task plug-in packages: every folder under ``tasks/`` with an ``__init__.py``."""
    return {f"{PACKAGE}.tasks.{p.parent.name}" for p in (SRC / PACKAGE / "tasks").glob("*/__init__.py")}


def test_no_module_outside_tasks_imports_a_task_package():
    """Outside ``tasks/`` a task is reached through ``medlens.tasks`` (the registry and the base types) only; the lazy
    public re-exports of ``medlens/__init__.py`` are strings, not imports, and stay allowed."""
    graph = import_graph(SRC)
    pkgs = task_packages()
    assert {"medlens.tasks.classification", "medlens.tasks.anomaly"} <= pkgs
    offenders = [f"{mod} imports {dep}" for mod, deps in sorted(graph.items()) if not mod.startswith(f"{PACKAGE}.tasks")
                 for dep in sorted(deps) if any(dep == p or dep.startswith(p + ".") for p in pkgs)]
    assert not offenders, "import medlens.tasks (task_of, get_task, the base types) instead of a task package:\n" + "\n".join(offenders)


def test_no_module_outside_a_task_folder_names_that_task():
    """Adding a task is one folder plus one registry line: the regression task is the living proof. No file of the
    package outside ``tasks/regression/`` mentions it, except its line in ``tasks/__init__.py``. The example configs
    shipped in ``examples/`` (copies of ``configs/``) are users' data, not code: a config names its task."""
    mentions = []
    for path in sorted((SRC / PACKAGE).rglob("*")):
        rel = path.relative_to(SRC / PACKAGE).parts
        if not path.is_file() or path.suffix in (".pyc",) or "regression" in rel[:2] or (rel[0] == "examples" and path.suffix == ".yaml"):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if "regression" in line.lower():
                mentions.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert len(mentions) == 1 and mentions[0].startswith(f"{PACKAGE}/tasks/__init__.py:"), "\n".join(mentions)
    assert "import" in mentions[0]  # the registry line itself


def test_each_task_owns_its_config_section_and_no_task_lists_another_tasks_options():
    """Every task validates its own ``task_options`` model; no task's source names another task's option keys as
    ``task_options.<key>`` (refusals go through the core capabilities, not through lists of foreign keys)."""
    from medlens.tasks import get_task, list_kinds

    own: dict[str, set[str]] = {}
    for kind in list_kinds():
        t = get_task(kind)
        own.setdefault(t.name, set()).update(t.options_model.model_fields)
    for name in own:
        text = "\n".join(p.read_text() for p in (SRC / PACKAGE / "tasks" / name).rglob("*.py"))
        foreign = {k for other, keys in own.items() if other != name for k in keys - own[name]
                   if f"task_options.{k}" in text or f'"{k}"' in text and f"model.{k}" in text}
        assert not foreign, f"tasks/{name} names options of other tasks: {sorted(foreign)}"


def test_hooks_are_typed():
    """The Task hooks name their types (configs, tables, manifests, arrays): no parameter typed ``Any`` where a
    medlens type exists."""
    import inspect

    from medlens.tasks import Task

    untyped = []
    for name, fn in inspect.getmembers(Task, inspect.isfunction):
        for pname, param in inspect.signature(fn).parameters.items():
            if pname in ("cfg", "manifest", "table", "train_table", "val_table", "space", "predictor", "preprocessing") and (
                    param.annotation in (inspect.Parameter.empty, "Any")):
                untyped.append(f"Task.{name}({pname})")
    assert not untyped, untyped


def test_the_task_name_check_sees_every_form(tmp_path):
    p = tmp_path / "m.py"
    p.write_text(
        "def f(m, k):\n"
        "    if m.task == 'anomaly':\n"                  # 2
        "        pass\n"
        "    if k in ('binary', 'multilabel'):\n"        # 4 (twice)
        "        pass\n"
        "    ok = 'classification' != k\n"              # 6
        "    x = {'anomaly': 1}\n"                       # a dict key, not a comparison
        "    return k not in ['multiclass'] and m.kind == 'other'\n"  # 8
    )
    assert task_name_comparisons(p, TASK_NAMES | KIND_NAMES) == [
        (2, "anomaly"), (4, "binary"), (4, "multilabel"), (6, "classification"), (8, "multiclass")]


# ------------------------------------------------------------------------------------------ private names
def private_uses(path: Path, current: str, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, what) for each private name of another package module that ``path`` uses."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    hits: list[tuple[int, str]] = []
    module_aliases: dict[str, str] = {}  # local name -> package module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve_from(modules, current, node)
            if not target or not (target == PACKAGE or target.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    module_aliases[alias.asname or alias.name] = sub
                    is_private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if is_private and target != current and not _inside(current, target):
                        hits.append((node.lineno, f"imports private module {sub}"))
                elif alias.name.startswith("_") and not alias.name.startswith("__") and target != current:
                    hits.append((node.lineno, f"imports {target}.{alias.name}"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    if alias.asname:
                        module_aliases[alias.asname] = alias.name
                    else:
                        module_aliases.setdefault(alias.name, alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            dotted = _dotted(node.value)
            target = module_aliases.get(dotted) if dotted else None
            if target and target != current:
                hits.append((node.lineno, f"uses {target}.{node.attr}"))
    return sorted(set(hits))


def _inside(current: str, target: str) -> bool:
    """A module may use the private helpers of its own package (``data/readers/x.py`` -> ``data.readers._common``)."""
    return current.rpartition(".")[0] == target or current.startswith(target + ".")


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def test_no_private_names_across_modules():
    modules = module_files(SRC)
    offenders = []
    for name, path in modules.items():
        offenders += [f"src/{PACKAGE}/{_rel(path)}:{line}: {what}" for line, what in private_uses(path, name, modules)]
    assert not offenders, "private names used from another medlens module:\n" + "\n".join(offenders)
