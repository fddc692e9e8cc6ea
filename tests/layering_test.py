"""The package's layers, read from its imports: no circle, lower layers never
import upper ones, no module over MAX_LINES lines (README "Architecture")."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'vaejax'
MAX_LINES = 400

# Lowest first. A module may import modules of its own layer or below.
LAYERS = (
    ('foundation', ('errors', 'registry', 'prng', 'images', 'configs')),
    ('data and numerics', ('sharding', 'data', 'analysis', 'optim')),
    ('objectives', ('objectives',)),
    ('models', ('models',)),
    ('experiment', ('experiment', 'metric_writers')),
    ('workdir', ('workdir', 'checkpoint')),
    ('evaluation', ('evaluators',)),
    ('stages', ('stages',)),
    ('train loop', ('train', 'faults')),
    ('commands', ('main', 'evaluate', 'curves', 'soak', 'benchmark',
                  'benchmark_programs', 'profiling', 'cli')),
)


def module_name(path):
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def modules():
  return {module_name(path): path for path in sorted(PACKAGE.rglob('*.py'))}


def imported_modules(path, known):
  """The vaejax modules `path` imports (at any depth of its code)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      # `from vaejax.x import y` is module vaejax.x.y when that exists.
      names = [f'{node.module}.{alias.name}' for alias in node.names]
      names = [n if n in known else node.module for n in names]
    found.update(n for n in names if n in known)
  return found


def layer_of(name):
  top = name.split('.')[1] if '.' in name else ''
  for rank, (_, members) in enumerate(LAYERS):
    if top in members:
      return rank
  raise AssertionError(f'{name} is in no layer of LAYERS: add it.')


@pytest.fixture(scope='module')
def graph():
  known = modules()
  return {name: imported_modules(path, known) - {name}
          for name, path in known.items()}


def test_every_module_has_a_layer(graph):
  for name in graph:
    if name != 'vaejax':
      layer_of(name)


def test_lower_layers_never_import_upper_ones(graph):
  violations = []
  for name, imports in graph.items():
    if name == 'vaejax':
      continue
    for imported in imports:
      if imported != 'vaejax' and layer_of(imported) > layer_of(name):
        violations.append(
            f'{name} ({LAYERS[layer_of(name)][0]}) imports {imported} '
            f'({LAYERS[layer_of(imported)][0]})')
  assert not violations, '\n'.join(violations)


def find_cycle(graph):
  """One import circle as a list of modules, or None."""
  state = {}

  def visit(name, path):
    state[name] = 'open'
    for imported in sorted(graph.get(name, ())):
      if state.get(imported) == 'open':
        return path[path.index(imported):] + [imported]
      if imported not in state:
        cycle = visit(imported, path + [imported])
        if cycle:
          return cycle
    state[name] = 'done'
    return None

  for name in sorted(graph):
    if name not in state:
      cycle = visit(name, [name])
      if cycle:
        return cycle
  return None


def test_no_import_circle(graph):
  # Package __init__ modules re-export their own submodules; a circle
  # through one is still a circle.
  assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_find_cycle_finds_a_planted_circle():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c',
                                                              'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_the_data_package_imports_nothing_above_it(graph):
  for name, imports in graph.items():
    if name.startswith('vaejax.data'):
      above = {i for i in imports if layer_of(i) > layer_of(name)}
      assert not above, f'{name} imports {above}'


def test_no_module_is_too_long():
  long_modules = {module_name(path): len(path.read_text().splitlines())
                  for path in PACKAGE.rglob('*.py')}
  too_long = {name: n for name, n in long_modules.items() if n > MAX_LINES}
  assert not too_long, (f'modules over {MAX_LINES} lines (split them by '
                        f'concern): {too_long}')


def test_library_code_reads_config_keys_directly():
  """The experiment files set every key (vaejax/configs/common.py); a
  `.get(key, default)` on a config would hide a second default."""
  offenders = []
  for path in PACKAGE.rglob('*.py'):
    for node in ast.walk(ast.parse(path.read_text())):
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == 'get' and node.args
          and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, str)
          and 'config' in ast.unparse(node.func.value)):
        offenders.append(f'{module_name(path)}:{node.lineno} '
                         f'{ast.unparse(node)}')
  assert not offenders, '\n'.join(offenders)
