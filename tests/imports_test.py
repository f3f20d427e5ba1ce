"""Imports flow one way: no cycle among the project's modules (imports inside functions
included), and the modules that use a trained run never load the trainer."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "dcgan_jax"


def _graph() -> dict[str, set[str]]:
  """Each module's project imports, at any depth of its code."""
  modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
  graph = {}
  for name in modules:
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module == "dcgan_jax":
        found |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dcgan_jax."):
        found.add(node.module.split(".")[1])
      elif isinstance(node, ast.Import):
        found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("dcgan_jax.")}
    graph[name] = found & modules
  return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for nxt in graph[todo.pop()] - seen:
      seen.add(nxt)
      todo.append(nxt)
  return seen


def test_the_graph_is_what_the_modules_import():
  graph = _graph()
  assert {"steps", "parallel"} <= graph["checkpoint"]
  assert "workdir" in graph["sampling"] and "sampling" in graph["train"]


def test_no_module_imports_itself_through_others():
  graph = _graph()
  cycles = sorted(name for name in graph if name in _reachable(graph, name))
  assert cycles == []


def test_modules_of_a_trained_run_never_load_the_trainer():
  graph = _graph()
  for name in ("sampling", "serve", "convert", "eval_run", "workdir", "evaluation", "steps"):
    assert "train" not in _reachable(graph, name), name
