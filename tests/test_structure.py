"""The layout holds, as docs/architecture.md states it: every file has a row in its code map with its
layer and imports only from layers below (or, in the foundation, model and engine layers, from its own
layer, without cycles); nothing but an entry point imports a run mode; no private name crosses files; every
module imports on its own."""
import ast
import os
import re
import subprocess
import sys

from conftest import ROOT

FOUNDATION, MODEL, ENGINE, RUN_MODE, ENTRY = range(5)
LAYER_NAMES = {FOUNDATION: 'foundation', MODEL: 'model', ENGINE: 'engine', RUN_MODE: 'run mode', ENTRY: 'entry point'}
ARCHITECTURE = ROOT / 'docs' / 'architecture.md'


def code_map() -> dict:
    """{path: layer name} from the code map of docs/architecture.md: the one place the layers are
    written down (a row 'pkg/' gives the layer of pkg/__init__.py)."""
    text = ARCHITECTURE.read_text()
    section = text.split('## Code map', 1)
    assert len(section) == 2, 'docs/architecture.md has no "## Code map" section'
    body = section[1].split('\n## ', 1)[0]
    rows = dict(re.findall(r'^\| `([^`]+)` \| ([a-z ]+) \|', body, re.M))
    return {(path + '__init__.py' if path.endswith('/') else path): layer for path, layer in rows.items()}


LAYERS = {path: {v: k for k, v in LAYER_NAMES.items()}.get(name, name) for path, name in code_map().items()}
# bench/* sits above the entry points: a benchmark may import any project file (bench/baseline.py, the
# per-frame loop, other benchmarks' helpers, entry points), but no private name


def project_files():
    out = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '*.py'], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return sorted(f for f in out if not f.startswith('tests/') and os.path.exists(ROOT / f))


def layer_of(path: str) -> int:
    return ENTRY if path.startswith('bench/') else LAYERS[path]


def module_file(name: str):
    """'modules.util' -> 'modules/util.py' (or a package's __init__.py) if it is a project file."""
    base = name.replace('.', '/')
    for candidate in (base + '.py', base + '/__init__.py', 'bench/' + base + '.py'):
        if os.path.isfile(ROOT / candidate):
            return candidate
    return None


def imports_of(path: str):
    """[(imported project file, names taken, line)] of every import statement, local ones too;
    attribute access `module._x` on an imported project module counts as taking `_x`."""
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    found, aliases = [], {}
    package = os.path.dirname(path).replace('/', '.')
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = module_file(alias.name)
                if target:
                    found.append((target, [], node.lineno))
                    aliases[alias.asname or alias.name] = target
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ''
            if node.level:
                name = (package + '.' + name).strip('.') if name else package
            target = module_file(name)
            if target:
                found.append((target, [a.name for a in node.names], node.lineno))
            for alias in node.names:  # `from modules import util`
                sub = module_file(name + '.' + alias.name) if name else None
                if sub:
                    found.append((sub, [], node.lineno))
                    aliases[alias.asname or alias.name] = sub
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and node.attr.startswith('_') and not node.attr.startswith('__'):
            found.append((aliases[node.value.id], [node.attr], node.lineno))
    return found


def test_imports_point_down_and_nothing_imports_a_run_mode():
    problems = []
    for path in project_files():
        own = layer_of(path)
        for target, names, line in imports_of(path):
            if target == path:
                continue
            theirs = layer_of(target)
            where = '%s:%d imports %s' % (path, line, target)
            bench = path.startswith('bench/')  # benchmarks sit on top of everything, as tests do
            if not bench and (theirs > own or (theirs == own and own >= RUN_MODE)):
                problems.append('%s (%s -> %s)' % (where, LAYER_NAMES[own], LAYER_NAMES[theirs]))
            private = [n for n in names if n.startswith('_') and not n.startswith('__')]
            if private:
                problems.append('%s: private name(s) %s' % (where, ', '.join(private)))
    assert not problems, '\n'.join(problems)


def test_no_import_cycles():
    graph = {path: {t for t, _, _ in imports_of(path) if t != path} for path in project_files()}
    state = {}

    def visit(node, stack):
        state[node] = 'open'
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                return stack + [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, stack + [node])
                if cycle:
                    return cycle
        state[node] = 'done'
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            assert cycle is None, 'import cycle: %s' % ' -> '.join(cycle)


IMPORT_EACH = r"""
import importlib, sys, traceback
root, names = sys.argv[1], sys.argv[2:]
sys.path[:0] = [root, root + '/bench']
import numpy, torch  # third-party packages stay loaded; only the project's modules are forgotten
failed = []
for name in names:
    for loaded in [m for m in sys.modules if getattr(sys.modules[m], '__file__', '') and
                   str(getattr(sys.modules[m], '__file__', '')).startswith(root)]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append('%s: %s' % (name, traceback.format_exc().strip().splitlines()[-1]))
print('\n'.join(failed))
sys.exit(1 if failed else 0)
"""


def test_each_module_imports_alone():
    """Each module imported first, in a fresh set of project modules (one interpreter: third-party
    packages stay loaded), so no import works only thanks to another module imported before it."""
    optional = {'app.py': 'gradio', 'export.py': 'onnx', 'engine/onnx_engine.py': 'onnxruntime', 'live.py': 'cv2'}
    names = [p[:-3].replace('/', '.').replace('.__init__', '').replace('bench.', '') for p in project_files()
             if p not in optional or _has(optional[p])]
    res = subprocess.run([sys.executable, '-c', IMPORT_EACH, str(ROOT)] + names, capture_output=True, text=True,
                         timeout=600, cwd=str(ROOT))
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]


def _has(package: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(package) is not None


def test_code_map_is_true():
    files = [f for f in project_files() if not f.startswith('bench/')]
    wrong = ['%s: %s' % (f, LAYERS.get(f, 'missing')) for f in files if LAYERS.get(f) not in LAYER_NAMES]
    extra = [f for f in LAYERS if f != 'bench/*' and f not in files]
    assert not wrong and not extra, ('docs/architecture.md code map: wrong layer or missing row %s; no such file %s'
                                     % (wrong, extra))


def test_one_driver_over_backend_primitives():
    """The engines' entry points are the driver's own (one definition), and each backend offers
    every primitive of the Backend protocol and none of the driver's entry points."""
    import inspect

    from engine.driver import Backend, Driver
    from engine.onnx_engine import OnnxBackend, OnnxEngine
    from engine.torch_engine import AnimationEngine, TorchBackend
    entry = ('set_source', 'set_reference', 'keypoints', 'stream', 'animate', 'animate_frame')
    for engine in (AnimationEngine, OnnxEngine):
        assert issubclass(engine, Driver)
        assert [name for name in entry if name in vars(engine)] == [], engine  # not redefined
    primitives = [name for name, _ in inspect.getmembers(Backend, inspect.isfunction)]
    assert {'to_batch', 'detect', 'encode', 'generate', 'context', 'to_uint8', 'to_float'} <= set(primitives)
    for backend in (TorchBackend, OnnxBackend):
        assert all(callable(getattr(backend, name, None)) for name in primitives), backend
        assert not set(entry) & set(vars(backend)), backend
