"""The package's layers: every import of a cm_jax module (at the top of a file or inside a
function) points at the same layer or one below, and no module reaches configs/.

Layers, lowest first. A new module must be placed here, or the test fails.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

LAYERS = [
    # base: errors, file and image I/O, devices, flag helpers, weight files, config defaults
    ("base", ["cm_jax.errors", "cm_jax.storage", "cm_jax.files", "cm_jax.images",
              "cm_jax.parallel", "cm_jax.cli", "cm_jax.progress",
              "cm_jax.weight_store", "cm_jax.workdir_lock", "cm_jax.defaults"]),
    # the mathematics: noise levels, ODEs, samplers, TrigFlow, the flow path, editing
    ("maths", ["cm_jax.karras", "cm_jax.ode", "cm_jax.sampling", "cm_jax.trigflow",
               "cm_jax.flow", "cm_jax.editing"]),
    ("data", ["cm_jax.data"]),
    ("models", ["cm_jax.models"]),
    ("losses", ["cm_jax.distances"]),
    ("methods", ["cm_jax.methods"]),
    # sampling plans: steps / sigmas / ts / times / ODE solvers / the searched 2-step level
    ("plans", ["cm_jax.plans"]),
    ("train", ["cm_jax.train", "cm_jax.checkpoint"]),
    ("evaluation", ["cm_jax.evaluation"]),
    # command lines and tools
    ("tools", ["cm_jax.sample", "cm_jax.sampling_flags", "cm_jax.edit", "cm_jax.edits",
               "cm_jax.evaluate", "cm_jax.bench", "cm_jax.convert", "cm_jax.train.report",
               "cm_jax.train.__main__", "cm_jax.api"]),
]


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = list(path.relative_to(root).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def layer_of(module: str) -> int:
  """The rank of the longest matching prefix (cm_jax.train.report is a tool, cm_jax.train.loop
  is train)."""
  best, rank = -1, None
  for i, (_, prefixes) in enumerate(LAYERS):
    for prefix in prefixes:
      if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
        best, rank = len(prefix), i
  if rank is None:
    raise LookupError(module)
  return rank


def imports_of(path: pathlib.Path, known: set[str]) -> list[tuple[str, int]]:
  """(imported cm_jax/configs module, line) for every import statement in the file."""
  out = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out += [(a.name, node.lineno) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        full = f"{node.module}.{a.name}"
        out.append((full if full in known else node.module, node.lineno))
  return [(m, line) for m, line in out if m.split(".")[0] in ("cm_jax", "configs")]


def package_graph(root: pathlib.Path = ROOT) -> dict:
  """{module: (path, [(imported module, line)])} for every file of root/cm_jax."""
  files = sorted((root / "cm_jax").rglob("*.py"))
  known = {module_name(f, root) for f in files}
  return {module_name(f, root): (f, imports_of(f, known)) for f in files}


def upward_imports(graph: dict) -> list[str]:
  problems = []
  for module, (path, imports) in graph.items():
    if module == "cm_jax":
      continue  # the package's own __init__ may re-export anything
    mine = layer_of(module)
    for target, line in imports:
      where = f"{path.name}:{line}"
      if target.split(".")[0] == "configs":
        problems.append(f"{where}: {module} imports {target} (the library must not use configs/)")
      elif target != "cm_jax" and layer_of(target) > mine:
        problems.append(f"{where}: {module} ({LAYERS[mine][0]}) imports {target} "
                        f"({LAYERS[layer_of(target)][0]})")
  return problems


def import_cycles(graph: dict) -> list[list[str]]:
  edges = {m: sorted({t for t, _ in imports if t in graph and t != m
                      and t != m.rsplit(".", 1)[0]})  # a submodule may import its package
           for m, (_, imports) in graph.items()}
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for t in edges[m]:
      if state.get(t) == "open":
        cycles.append(stack[stack.index(t):] + [t])
      elif t not in state:
        visit(t)
    stack.pop()
    state[m] = "done"

  for m in sorted(edges):
    if m not in state:
      visit(m)
  return cycles


def test_every_module_has_a_layer():
  missing = []
  for module in set(package_graph()) - {"cm_jax"}:  # the package root may re-export anything
    try:
      layer_of(module)
    except LookupError:
      missing.append(module)
  assert not missing, f"place these modules in LAYERS: {missing}"


def test_no_import_points_upward():
  assert upward_imports(package_graph()) == []


def test_no_import_cycles():
  assert import_cycles(package_graph()) == []


def test_the_checks_catch_an_upward_import_configs_and_a_cycle(tmp_path):
  pkg = tmp_path / "cm_jax"
  (pkg / "train").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "train" / "__init__.py").write_text("")
  (pkg / "train" / "loop.py").write_text("from cm_jax import checkpoint\n")
  (pkg / "checkpoint.py").write_text("from cm_jax.train import loop\n")
  (pkg / "karras.py").write_text("from cm_jax.train import loop\n")
  (pkg / "ode.py").write_text("def f():\n  from configs import base\n")
  graph = package_graph(tmp_path)
  problems = upward_imports(graph)
  assert len(problems) == 2, problems
  assert any("cm_jax.karras (maths) imports cm_jax.train.loop (train)" in p for p in problems)
  assert any("ode.py:2" in p and "must not use configs/" in p for p in problems)
  assert import_cycles(graph) == [["cm_jax.checkpoint", "cm_jax.train.loop", "cm_jax.checkpoint"]]


@pytest.mark.parametrize("module, layer", [("cm_jax.train.loop", "train"),
                                           ("cm_jax.train.report", "tools"),
                                           ("cm_jax.models.lpips", "models")])
def test_the_longest_prefix_decides(module, layer):
  assert LAYERS[layer_of(module)][0] == layer
