"""The import structure: stubdom's packages form no cycle, no module
imports another's private names, and the stub domain never loads the
hypervisor's packages (docs/architecture.md, "Contracts between packages").

The graph is read from the source with ``ast``: every import statement,
those inside functions included (a lazy import still loads its target when
it runs), except those under ``if TYPE_CHECKING:``, which are never
executed. Nodes are stubdom's subpackages and top-level modules (``daemon``,
``platform``, ``cli``, ``workloads``...).

The daemon's process is checked in child interpreters: after importing its
entry modules, after its real startup path with no platform (it stops at
the SMC gate, exit 1), and, in a real daemon beside a real platform, by the
``loaded=`` field of its ``started`` and ``stopped`` log lines.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

import stubdom
from stubdom import workloads
from stubdom.config import load_config
from stubdom.guest import Context, MemoryStore, OpteeDriver, Supplicant
from stubdom.platform import Platform, domain_spec
from stubdom.platform.launch import DaemonProcess
from stubdom.public import ControlNoSuchDomain

SRC = Path(stubdom.__file__).resolve().parent
# What the stub domain must never load: the hypervisor's side of the
# simulation, the secure world, the guests and what drives them.
HYPERVISOR = frozenset({"platform", "tee", "guest", "workloads"})
DAEMON_TIMEOUT = 60  # seconds: a loaded CI box; never a latency assertion


# -- the package graph ------------------------------------------------------------------------------


# stubdom's subpackages and top-level modules
NODES = frozenset(p.stem if p.is_file() else p.name for p in SRC.iterdir()
                  if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists())


def _node(module: str) -> str | None:
    """The subpackage or top-level module of stubdom that ``module`` is in
    (None outside stubdom, and for a name of stubdom's own, __version__)."""
    parts = module.split(".")
    if parts[0] != "stubdom" or len(parts) < 2 or parts[1] not in NODES:
        return None
    return parts[1]


def _module_of(path: Path) -> tuple[list[str], bool]:
    """(the dotted name's parts, whether it is a package's __init__)."""
    parts = ["stubdom", *path.relative_to(SRC).with_suffix("").parts]
    if parts[-1] == "__init__":
        return parts[:-1], True
    return parts, False


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node that can run (not under TYPE_CHECKING)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(node: ast.Import | ast.ImportFrom, parts: list[str], is_pkg: bool) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for each alias."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names]
    if node.level:
        base = parts if is_pkg else parts[:-1]
        base = base[:len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    # ``from stubdom import workloads`` / ``from . import latency``: a module each
    return [(f"{module}.{a.name}", None) if module == "stubdom" or not node.module else (module, a.name)
            for a in node.names]


def package_graph() -> dict[str, dict[str, list[str]]]:
    """node -> {node it imports: ["file:line", ...]}."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(SRC.rglob("*.py")):
        parts, is_pkg = _module_of(path)
        here = _node(".".join(parts))
        for node in _imports(ast.parse(path.read_text(), str(path))):
            for module, _name in _targets(node, parts, is_pkg):
                there = _node(module)
                if there is not None and there != here:
                    graph[here][there].append(f"{path.relative_to(SRC.parent)}:{node.lineno}")
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_of_every_kind():
    graph = package_graph()
    # a plain, a relative-to-stubdom and a lazy (in-function) import
    assert "mediator" in graph["daemon"] and "rundir" in graph["xen"]
    assert "workloads" in graph["platform"]  # run.py: from stubdom import workloads
    assert "demo" in graph["cli"]  # cli.main: a lazy import
    # an import under TYPE_CHECKING is not an edge (policy's engine names Config)
    assert "config" not in graph["policy"]


def test_no_import_cycles_between_packages():
    graph = package_graph()
    found = cycles(graph)
    detail = [f"{a} -> {b}: {', '.join(graph[a][b])}" for c in found for a in c for b in graph[a] if b in c]
    assert not found, "import cycles between stubdom's packages:\n" + "\n".join(detail)


def test_cycles_are_found():
    graph = {"bench": {"hostile": ["x"]}, "hostile": {"bench": ["y"]}, "daemon": {"public": ["z"]}}
    assert cycles(graph) == [["bench", "hostile"]]


def test_no_module_imports_another_modules_private_names():
    """Within a package too: what two modules share is public in one of
    them (bench's block driver is blocks.drive_block, not runner._drive)."""
    offences = []
    for path in sorted(SRC.rglob("*.py")):
        parts, is_pkg = _module_of(path)
        for node in _imports(ast.parse(path.read_text(), str(path))):
            for module, name in _targets(node, parts, is_pkg):
                private = name is not None and name.startswith("_") and not name.startswith("__")
                if module.startswith("stubdom.") and private:
                    offences.append(f"{path.relative_to(SRC.parent)}:{node.lineno}: {name} from {module}")
    assert offences == []


def test_the_daemons_packages_do_not_import_the_hypervisors():
    graph = package_graph()
    reach, todo = set(), ["daemon"]
    while todo:
        for there in graph.get(todo.pop(), {}):
            if there not in reach:
                reach.add(there)
                todo.append(there)
    assert reach & HYPERVISOR == set(), {p: dict(graph[p]) for p in reach}
    assert {"public", "mediator", "config", "rundir"} <= reach


# -- the façades -------------------------------------------------------------------------------------


@pytest.mark.parametrize("package, modules", [
    ("stubdom.public", ("control", "control_client", "errors", "gate", "gate_client")),
    ("stubdom.measure", ("latency", "procinfo")),
    ("stubdom.trace", ("tracer", "summary")),
    ("stubdom.rundir", ("directory", "errors", "peercred", "sockaddr")),
])
def test_a_shared_package_exports_every_public_name_of_its_modules(package, modules):
    facade = importlib.import_module(package)
    for name in facade.__all__:
        assert getattr(facade, name) is not None, name
    for module in modules:
        names = set(importlib.import_module(f"{package}.{module}").__all__)
        assert names <= set(facade.__all__), (module, sorted(names - set(facade.__all__)))


# package -> (the module of its command, the command)
COMMANDS = {"stubdom.platform": ("run", "run_platform"), "stubdom.daemon": ("app", "run_daemon"),
            "stubdom.bench": ("main", "bench_main")}


@pytest.mark.parametrize("package", sorted(COMMANDS))
def test_a_package_loads_its_command_only_when_asked(package):
    module, command = COMMANDS[package]
    code = textwrap.dedent(f"""\
        import sys
        import {package}
        assert "{package}.{module}" not in sys.modules
        from {package} import {command}
        assert {command}.__module__ == "{package}.{module}"
        """)
    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=DAEMON_TIMEOUT)
    assert r.returncode == 0, r.stderr


# -- the daemon's process ------------------------------------------------------------------------


def _loaded_in_child(code: str, *args: str) -> tuple[int, set[str], str]:
    """Run ``code`` in a child interpreter (the installed package, -P); the
    child prints the set of stubdom's packages it loaded on its last line."""
    report = ("import json, sys\n"
              "print(json.dumps(sorted({m.split('.')[1] for m in sys.modules if m.startswith('stubdom.')})))\n")
    r = subprocess.run([sys.executable, "-P", "-c", code + "\n" + report, *args],
                       capture_output=True, text=True, timeout=DAEMON_TIMEOUT)
    assert r.stdout, r.stderr
    return r.returncode, set(json.loads(r.stdout.splitlines()[-1])), r.stderr


@pytest.mark.parametrize("entry", ["stubdom.daemon.app", "stubdom.daemon.__main__", "stubdom.cli"])
def test_the_daemons_entry_modules_load_no_hypervisor_package(entry):
    rc, loaded, err = _loaded_in_child(f"import {entry}")
    assert rc == 0, err
    assert loaded & HYPERVISOR == set(), sorted(loaded)


def test_the_daemons_startup_without_a_platform_loads_no_hypervisor_package(tmp_path):
    """`stubdom-teed --config X` as far as it goes with no platform: the
    configuration loaded, the runtime directory made, the mediator, policy
    and machine modules imported, the gate looked for: exit 1."""
    config = tmp_path / "xen.yaml"
    config.write_text(textwrap.dedent(f"""\
        mediator:
          placement: stubdom
          runtime_dir: {tmp_path / 'run'}
        """))
    code = ("import sys\nfrom stubdom.cli import main\n"
            "rc = main(sys.argv[1:])\nassert rc == 1, rc\n")
    rc, loaded, err = _loaded_in_child(code, "--config", str(config))
    assert rc == 0, err
    gate = tmp_path / "run" / "xen" / "gate" / "evtchn"
    assert err == (f"stubdom-teed: no SMC gate at {gate} (no such socket); start the platform first with "
                   f"`stubdom-teed platform --config {config}`\n")
    assert {"config", "daemon", "mediator", "policy", "public", "xen"} <= loaded, sorted(loaded)
    assert loaded & HYPERVISOR == set(), sorted(loaded)


def _loaded_field(line: str) -> set[str]:
    (value,) = [f.removeprefix("loaded=") for f in line.split() if f.startswith("loaded=")]
    return set(value.split(","))


def test_a_running_daemon_never_loads_a_hypervisor_package(tmp_path):
    """A real daemon beside a real platform, through a domain's whole life
    (create, guest calls, stats, dump, reload, destroy) and its shutdown:
    its ``started`` and ``stopped`` lines list what it loaded."""
    path = tmp_path / "xen.yaml"
    path.write_text(textwrap.dedent(f"""\
        mediator:
          placement: stubdom
          runtime_dir: {tmp_path / 'run'}
        domains:
          - domid: 1
            nr_pages: 1024
        """))
    config = load_config(path)
    log = tmp_path / "daemon.log"
    with Platform.for_config(config) as platform, DaemonProcess(path, log) as daemon:
        toolstack = platform.placement.toolstack
        daemon.wait_ready(toolstack, DAEMON_TIMEOUT)
        domain = platform.create_domain(domain_spec(config.domain(1)))
        driver = OpteeDriver(platform.trap_entry(1), domain, supplicant=Supplicant(MemoryStore()))
        driver.probe()
        with Context(driver) as ctx:  # a standard call, with its RPCs
            assert workloads.increment(ctx, 1) == 2
        assert toolstack.stats(1)["domains"]["1"]["calls"]["CALLS_UID"] == 1
        toolstack.request("dump", domid=1)
        assert toolstack.request("reload")["reloaded"] is True
        with pytest.raises(ControlNoSuchDomain):
            toolstack.request("dump", domid=7)
        driver.shutdown()
        platform.destroy_domain(1)
        assert daemon.stop() == 0
    lines = log.read_text().splitlines()
    started = next(ln for ln in lines if " event=started " in ln)
    stopped = next(ln for ln in lines if " event=stopped " in ln)
    assert {"daemon", "mediator", "public"} <= _loaded_field(started)
    assert _loaded_field(started) <= _loaded_field(stopped)
    assert _loaded_field(stopped) & HYPERVISOR == set(), stopped


def test_the_loaded_field_names_what_this_process_loaded():
    from stubdom.daemon.app import loaded_packages

    assert set(loaded_packages().split(",")) == {m.split(".")[1] for m in sys.modules if m.startswith("stubdom.")}


def test_every_child_interpreter_runs_the_installed_package():
    """A child started as `python -m stubdom…` without -P puts the current
    directory first on its path: from a source checkout it would import the
    tree, which has no built ring extension after a plain `pip install .`
    (CI found two such tests). Every child interpreter the code or the suite
    starts passes -P; the mutation runner, which runs pytest in a mutated
    clone on purpose, and the clone's build step are the exceptions."""
    root = Path(__file__).resolve().parent.parent
    allowed = {("tests/defence_mutants.py", 'sys.executable, "-m", "pytest"'),
               ("tests/defence_mutants.py", 'sys.executable, "cffi_build/build_ring.py"')}
    found = []
    for path in sorted([*root.glob("stubdom/**/*.py"), *root.glob("tests/*.py")]):
        rel = path.relative_to(root).as_posix()
        if path == Path(__file__).resolve():  # this test's own strings
            continue
        for m in re.finditer(r"sys\.executable,\s*(\"[^\"]*\")", path.read_text()):
            call = f'sys.executable, {m.group(1)}'
            if m.group(1) != '"-P"' and not any(rel == f and call in a for f, a in allowed):
                found.append(f"{rel}: {call}")
    assert not found, found
