"""The package's dependencies point one way: no import circle between ddetr's parts (its
subpackages and top-level modules, counting imports inside functions too), the errors
module is a leaf, the config layer sits below the engine, and the tools import the
installed package instead of editing sys.path."""
import ast
import glob
import os.path as osp
from collections import defaultdict
from typing import Dict, Set

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGE = osp.join(ROOT, 'ddetr')


def _module_name(path: str) -> str:
    name = osp.relpath(path, ROOT)[:-len('.py')].replace(osp.sep, '.')
    return name[:-len('.__init__')] if name.endswith('.__init__') else name


def _imports(path: str):
    """Every ddetr module ``path`` imports, at module level or inside a function."""
    module = _module_name(path)
    package = module if path.endswith('__init__.py') else module.rsplit('.', 1)[0]
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                names = ['.'.join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or '']
            # `from ddetr import _C` / `from .. import fast_paths`: a module, not a name
            names += [f'{names[0]}.{alias.name}' for alias in node.names]
        else:
            continue
        yield from (name for name in names if name.split('.')[0] == 'ddetr')


def _part(module: str) -> str:
    """ddetr.models.layers.mlp -> ddetr.models; ddetr.errors -> ddetr.errors."""
    return '.'.join(module.split('.')[:2])


def part_graph() -> Dict[str, Set[str]]:
    graph = defaultdict(set)
    known = {_part(_module_name(p)) for p in glob.glob(f'{PACKAGE}/**/*.py', recursive=True)}
    for path in glob.glob(f'{PACKAGE}/**/*.py', recursive=True):
        source = _part(_module_name(path))
        for target in _imports(path):
            target = _part(target)
            if target != source and target in known and target != 'ddetr':
                graph[source].add(target)
    return graph


def _cycle(graph):
    """One import circle of ``graph`` as a list of parts, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
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


def test_no_import_circle_between_the_parts_of_ddetr():
    graph = part_graph()
    assert graph['ddetr.engine'] and graph['ddetr.models']  # the graph was read
    assert _cycle(graph) is None, ' -> '.join(_cycle(graph))


def test_the_cycle_finder_finds_a_circle():
    assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert _cycle({'a': {'b'}, 'b': {'c'}}) is None


def test_errors_is_a_leaf_and_the_config_layer_sits_below_the_engine():
    graph = part_graph()
    assert not graph.get('ddetr.errors')
    assert graph['ddetr.config'] <= {'ddetr.errors'}
    assert 'ddetr.config' in graph['ddetr.engine']
    for low in ('ddetr.errors', 'ddetr.config', 'ddetr.ops', 'ddetr.registry'):
        assert 'ddetr.engine' not in graph.get(low, ()), low
        assert 'ddetr.cli' not in graph.get(low, ()), low


def test_tools_import_the_package_without_editing_sys_path():
    offenders = []
    for path in glob.glob(osp.join(ROOT, 'tools', '**', '*.py'), recursive=True):
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if (isinstance(node, ast.Attribute) and node.attr == 'path'
                    and isinstance(node.value, ast.Name) and node.value.id == 'sys'):
                offenders.append(osp.relpath(path, ROOT))
                break
    assert not offenders, offenders
