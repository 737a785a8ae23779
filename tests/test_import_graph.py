"""The package's import graph has no cycle, so its modules import in any order.

The graph is read from the source: an edge from a module to every tfcredit module
it imports at its top level (not inside functions), and to that module's parent
packages, whose ``__init__`` runs first (except its own parents, which are
being imported already). The root package is left out: it imports the public
API, and every module sits under it.
"""

import ast
import os

import tfcredit

ROOT = os.path.dirname(tfcredit.__file__)


def _module_name(path):
  relative = os.path.relpath(path, os.path.dirname(ROOT))[:-len('.py')]
  parts = relative.split(os.sep)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _modules():
  found = {}
  for directory, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        found[_module_name(path)] = path
  return found


def _top_level_imports(path, modules):
  with open(path) as f:
    tree = ast.parse(f.read())
  package = _module_name(path)
  if not path.endswith('__init__.py'):
    package = package.rsplit('.', 1)[0]
  names = set()
  nodes = list(tree.body)
  while nodes:  # Module level, including inside if/try blocks, not in functions.
    node = nodes.pop()
    if isinstance(node, (ast.If, ast.Try)):
      nodes.extend(ast.iter_child_nodes(node))
    elif isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1]
                        + ([base] if base else []))
      names.add(base)
      names.update(f'{base}.{alias.name}' for alias in node.names)
  edges = set()
  for name in names:
    parts = name.split('.')
    for end in range(2, len(parts) + 1):  # The module and its parent packages.
      candidate = '.'.join(parts[:end])
      if candidate in modules:
        edges.add(candidate)
  return edges


def _cycle(graph):
  """One cycle as a list of modules, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for neighbour in sorted(graph[node]):
      if state.get(neighbour) == 'open':
        return stack[stack.index(neighbour):] + [neighbour]
      if neighbour not in state:
        found = visit(neighbour)
        if found:
          return found
    stack.pop()
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_import_graph_has_no_cycle():
  modules = _modules()
  # A module's own parent packages are being imported already when it runs.
  ancestors = lambda name: {name.rsplit('.', k)[0] for k in range(name.count('.') + 1)}
  graph = {name: _top_level_imports(path, modules) - ancestors(name) - {'tfcredit'}
           for name, path in modules.items() if name != 'tfcredit'}
  assert len(graph) > 30
  assert any(graph.values())  # The parser found imports at all.
  assert _cycle(graph) is None, ' -> '.join(_cycle(graph))


def _every_import(path):
  """Every module an ``import`` statement names, at any depth (functions too)."""
  with open(path) as f:
    tree = ast.parse(f.read())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and not node.level:
      names.add(node.module)
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def test_the_library_imports_neither_the_commands_nor_their_flags():
  """The commands (``tfcredit.cli``) sit on top: the library (the benchmarks,
  the comparison, fidelity...) takes its settings as arguments, so no module
  outside ``tfcredit.cli`` imports it or absl's flags (``tfcredit.testing`` runs
  the commands, by name)."""
  modules = _modules()
  library = {name: path for name, path in modules.items()
             if not name.startswith('tfcredit.cli') and name != 'tfcredit.testing'}
  assert 'tfcredit.benchmarks.suite' in library and 'tfcredit.comparison' in library
  for name, path in library.items():
    imported = _every_import(path)
    assert not {module for module in imported
                if module == 'tfcredit.cli' or module.startswith('tfcredit.cli.')
                or module in ('absl.flags', 'absl.app')}, name


def test_the_cycle_finder_finds_a_cycle():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': set()}) is None


def test_the_public_api_is_written_out_and_complete():
  """``tfcredit.__all__`` names what the package exports: every registered method,
  each name defined, no duplicate."""
  names = tfcredit.__all__
  assert len(names) == len(set(names))
  for name in names:
    assert hasattr(tfcredit, name), name
  for cls in tfcredit.METHODS.values():
    assert cls.__name__ in names and getattr(tfcredit, cls.__name__) is cls
  for name in ('train', 'RecurrentModel', 'Task', 'Method', 'ConfigurationError'):
    assert name in names
  # Written out in the source, not computed at import.
  with open(os.path.join(ROOT, '__init__.py')) as f:
    tree = ast.parse(f.read())
  assigned = [node for node in tree.body if isinstance(node, ast.Assign) and any(
      getattr(target, 'id', None) == '__all__' for target in node.targets)]
  assert len(assigned) == 1 and isinstance(assigned[0].value, ast.List)
  assert [element.value for element in assigned[0].value.elts] == names
