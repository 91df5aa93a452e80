"""The package's layers (shared/DESIGN.md, Layout): every import under unclip_jax/ points down.

    core     pure functions and models: imports only core
    engines  build on the core; an engine imports only engines of a lower rank
             (sampling and input pipelines never import training, training never evaluation)
    face     argument parsing, printing, the web demo: may import anything

The presets (configs/, installed as `unclip_jax.configs`) import the library, so the library
never imports them: they sit at the face's level. Imports are read with `ast` (every
`import`, also inside functions), so the check runs in a second and imports nothing.
Also: no file under unclip_jax/ is longer than `MAX_LINES`.
"""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "unclip_jax")
MAX_LINES = 400

CORE = ("diffusion", "models", "clip", "parallel", "stages", "config_schema", "export", "errors",
        "jsonio", "atomic", "paths", "runtime", "distributed")
ENGINE_RANKS = {"data": 1, "sample": 1, "karlo": 1,
                "train": 2,
                "eval": 3, "bench": 3, "package": 3}
FACE = ("cli", "serve", "colab_setup", "configs")


def level(unit: str) -> float:
    """0 core, 1..3 engines by rank, 9 face."""
    if unit in CORE:
        return 0
    if unit in ENGINE_RANKS:
        return ENGINE_RANKS[unit]
    if unit in FACE:
        return 9
    raise AssertionError(f"unclip_jax.{unit} is in no layer: add it to tests/test_layers.py "
                         "(and shared/DESIGN.md, Layout)")


def may_import(importer: str, imported: str) -> bool:
    """Whether a module of unit `importer` may import unit `imported` (units: the first name
    below unclip_jax, e.g. 'sample' for unclip_jax.sample.chain)."""
    if importer == imported:
        return True
    a, b = level(importer), level(imported)
    if a in (0, 9):                 # core and face: their own layer and below
        return b <= a
    return b < a                    # engines: only lower ranks (and the core)


def module_files():
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def unit_of(path: str) -> str | None:
    """'sample' for unclip_jax/sample/chain.py, 'stages' for unclip_jax/stages.py; None for
    the package's own __init__ (the public entry: `from unclip_jax import UnCLIP`)."""
    rel = os.path.relpath(path, PACKAGE).split(os.sep)
    if rel == ["__init__.py"]:
        return None
    return rel[0][:-3] if rel[0].endswith(".py") else rel[0]


def imported_units(tree: ast.AST, package_modules: set[str]):
    """(line, unit) of every unclip_jax module a module's source imports."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "unclip_jax":       # from unclip_jax import export, __version__
                names = [f"unclip_jax.{a.name}" for a in node.names
                         if a.name in package_modules]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "unclip_jax" and len(parts) > 1:
                yield node.lineno, parts[1]


def violations(files) -> list[str]:
    package_modules = set(os.listdir(PACKAGE)) | {n[:-3] for n in os.listdir(PACKAGE)}
    package_modules.add("configs")
    out = []
    for path in files:
        unit = unit_of(path)
        if unit is None:
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for line, imported in imported_units(tree, package_modules):
            if not may_import(unit, imported):
                out.append(f"{os.path.relpath(path, REPO)}:{line} ({unit}, level "
                           f"{level(unit)}) imports unclip_jax.{imported} (level "
                           f"{level(imported)})")
    return out


def test_no_module_imports_from_a_layer_above_it():
    bad = violations(module_files())
    assert not bad, "imports pointing up:\n" + "\n".join(bad)


def test_the_check_sees_an_upward_import():
    """The check itself: sampling importing training (also inside a function), the core
    importing a preset or an engine are each caught; imports down are not."""
    cases = {
        "sample/chain.py": "from unclip_jax.train.loop import train\n",
        "sample/lazy.py": "def f():\n    from unclip_jax import train\n",
        "stages.py": "from unclip_jax.configs import shapes\n",
        "export.py": "import unclip_jax.data.pipeline\n",
        "train/ok.py": "from unclip_jax.sample import images\nfrom unclip_jax import stages\n",
        "cli/ok.py": "from unclip_jax.configs import shapes\nimport unclip_jax.train.loop\n",
    }
    modules = {"train", "stages", "configs", "data", "sample", "export"}
    found = [(rel, imported) for rel, text in cases.items()
             for _, imported in imported_units(ast.parse(text), modules)
             if not may_import(unit_of(os.path.join(PACKAGE, rel)), imported)]
    assert found == [("sample/chain.py", "train"), ("sample/lazy.py", "train"),
                     ("stages.py", "configs"), ("export.py", "data")]


def test_every_unit_has_a_layer():
    units = {unit_of(p) for p in module_files()} - {None}
    for unit in units:
        level(unit)


def test_no_file_is_longer_than_the_limit():
    long = []
    for path in module_files():
        with open(path, encoding="utf-8") as f:
            lines = sum(1 for _ in f)
        if lines > MAX_LINES:
            long.append(f"{os.path.relpath(path, REPO)}: {lines} lines")
    assert not long, f"split along their seams (limit {MAX_LINES}):\n" + "\n".join(long)


def test_every_command_is_one_cli_module():
    """One registration convention: command NAME ↔ module unclip_jax/cli/NAME.py (dashes as
    underscores) with add_arguments(parser) and run(args); other cli modules are helpers
    (parser, config_args, private _NAME)."""
    from unclip_jax import cli
    modules = {n[:-3] for n in os.listdir(os.path.join(PACKAGE, "cli"))
               if n.endswith(".py") and not n.startswith("_")}
    assert modules - {"parser", "config_args"} == {c.replace("-", "_") for c in cli.COMMANDS}
    for name in cli.COMMANDS:
        module = cli.command_module(name)
        assert callable(module.add_arguments) and callable(module.run), name
