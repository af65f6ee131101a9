"""The YAML loader: the shipped configs load, every error class is reported
with file, line and key path, all problems at once."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

import stubdom.config as config_pkg
from stubdom.config import ConfigError, load_config, parse_config, runtime_dir_of
from stubdom.config.schema import MAX_RING_PAGES, POLICY_KEYS, SCHEMA, Section, key_paths
from stubdom.mediator import DomainLimits
from stubdom.optee.smc import (
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
    OPTEE_SMC_SEC_CAP_MEMREF_NULL,
    OPTEE_SMC_SEC_CAP_RPC_ARG,
    OPTEE_SMC_SEC_CAP_VIRTUALIZATION,
)
from stubdom.rundir import default_runtime_dir
from stubdom.tee import TeeConfig

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def problems(text: str, name: str = "t.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), name)
    return list(info.value.problems)


def one_problem(text: str) -> str:
    got = problems(text)
    assert len(got) == 1, got
    return got[0]


# -- the shipped configurations ---------------------------------------------------


def test_embedded_default_is_configs_xen_yaml():
    embedded = load_config(None)
    on_disk = load_config(CONFIGS / "xen.yaml")
    assert embedded == on_disk
    assert embedded.source == "<embedded>/xen.yaml"
    assert on_disk.source == str(CONFIGS / "xen.yaml")
    link = REPO / "stubdom" / "config" / "xen.yaml"
    assert link.resolve() == (CONFIGS / "xen.yaml").resolve()


def test_default_config_contents():
    c = load_config(None)
    assert c.mediator.placement == "stubdom"
    assert [d.domid for d in c.domains] == [0, 1, 2]
    dom0, g1, g2 = c.domains
    assert (dom0.hwdom, dom0.direct_mapped, dom0.static_shm, dom0.policy.static_shm_allowed) == (
        True, True, True, True)
    for g in (g1, g2):
        assert (g.hwdom, g.direct_mapped, g.static_shm, g.policy.static_shm_allowed) == (
            False, False, False, False)
    assert c.tee.guest_count >= 3
    assert c.tee.sec_caps == (OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM
                              | OPTEE_SMC_SEC_CAP_VIRTUALIZATION | OPTEE_SMC_SEC_CAP_MEMREF_NULL
                              | OPTEE_SMC_SEC_CAP_RPC_ARG)
    assert isinstance(c.tee, TeeConfig)
    assert isinstance(dom0.policy.limits, DomainLimits)
    assert dom0.policy.limits.max_calls == 16 and g1.policy.limits.max_calls == 8
    # guests inherit defaults: key by key
    assert g1.policy == c.default_policy
    assert "hypervisor" not in c.default_policy.allowed_classes
    assert "rpc_return" in c.default_policy.allowed_classes


def test_policy_for_unknown_domain_is_defaults():
    c = load_config(None)
    assert c.policy_for(7) is c.default_policy
    assert c.policy_for(0) is c.domain(0).policy
    assert c.domain(7) is None


@pytest.mark.parametrize("name", ["xen.yaml", "bench.yaml", "reference.yaml"])
def test_shipped_configs_load(name):
    c = load_config(CONFIGS / name)
    assert c.domains


def test_bench_config_has_no_rate_limit():
    c = load_config(CONFIGS / "bench.yaml")
    assert c.default_policy.rate is None
    assert all(d.policy.rate is None for d in c.domains)


def _reference_paths(node: yaml.Node, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = f"{prefix}.{k.value}" if prefix else k.value
            out.add(path)
            out |= _reference_paths(v, path)
    elif isinstance(node, yaml.SequenceNode) and prefix == "domains":
        for item in node.value:
            out |= _reference_paths(item, prefix + "[]")
    return out


def test_reference_names_every_key():
    root = yaml.compose((CONFIGS / "reference.yaml").read_text(), Loader=yaml.SafeLoader)
    present = _reference_paths(root)
    missing = [p for p, _ in key_paths() if p not in present]
    assert missing == []


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = f"{prefix}.{k.value}" if prefix else k.value
            out.setdefault(path, k.start_mark.line)
            for p, line in _key_lines(v, path).items():
                out.setdefault(p, line)
    elif isinstance(node, yaml.SequenceNode) and prefix == "domains":
        for item in node.value:
            for p, line in _key_lines(item, prefix + "[]").items():
                out.setdefault(p, line)
    return out


def test_reference_comments_every_key():
    # the key's line, or the comment block just above it, gives its type
    text = (CONFIGS / "reference.yaml").read_text()
    lines = text.splitlines()
    at = _key_lines(yaml.compose(text, Loader=yaml.SafeLoader))
    types = ("int", "bool", "list", "mapping", "path", "string", "number", "el2 |", "debug |", "early |")
    policy = {k.name for k in POLICY_KEYS}
    for path, key in key_paths():
        if path.startswith("domains[].") and path.split(".")[1] in policy:
            continue  # the policy keys are described once, under defaults:
        i = at[path]
        block = [lines[i]]
        j = i - 1
        while j >= 0 and lines[j].lstrip().startswith("#"):
            block.insert(0, lines[j])
            j -= 1
        joined = " ".join(block)
        assert any(t in joined for t in types), (path, joined)
        assert "default" in joined or "required" in joined or isinstance(key.kind, Section), (path, joined)


def test_docs_name_every_key():
    doc = (REPO / "docs" / "config.md").read_text()
    for path, _ in key_paths():
        assert f"`{path}`" in doc, path


def test_ring_pages_bound_matches_ring():
    ring = pytest.importorskip("ring")
    assert MAX_RING_PAGES == ring.MAX_RING_PAGES


@pytest.mark.parametrize("text", ["", "\n\n", "# every key commented out\n#tee:\n#  threads: 4\n"])
def test_an_empty_file_is_refused_naming_it(tmp_path, text):
    """Issue 15, item 7: a file with nothing in it is a mistake (a wrong
    path, an editor that saved nothing), not 'every default'."""
    f = tmp_path / "empty.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert list(e.value.problems) == [f"{f}:1: (top level): the file is empty (no key, only whitespace or "
                                      "comments); write the sections you mean, or {} for every default"]


@pytest.mark.parametrize("text", ["", "{}\n"])
def test_an_empty_document_or_mapping_gives_every_default(tmp_path, text):
    c = parse_config(text, "defaults.yaml", base_dir=tmp_path)
    assert c.domains == ()
    assert c.tee == TeeConfig()
    assert c.mediator.placement == "stubdom"


def test_relative_runtime_dir_is_relative_to_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("mediator: {runtime_dir: run}\n")
    assert load_config(f).mediator.runtime_dir == tmp_path.resolve() / "run"


def test_hex_and_uuid_values():
    c = parse_config(textwrap.dedent("""\
        tee: {os_revision: {build_id: 0xdeadbeef}}
        defaults:
          ta_allow: [8AAAF200-2450-11E4-ABE2-0002A5D5C51B]
        """), "t.yaml")
    assert c.tee.os_build_id == 0xDEADBEEF
    assert c.default_policy.ta_allow == frozenset({uuid.UUID("8aaaf200-2450-11e4-abe2-0002a5d5c51b")})


def test_domain_inherits_defaults_key_by_key():
    c = parse_config(textwrap.dedent("""\
        defaults:
          deny_classes: [protmem]
          limits: {calls_in_flight: 3, total_pages: 500}
          rate: {calls_per_second: 5, burst: 2}
        domains:
          - domid: 4
            limits: {total_pages: 600}
            rate: null
        """), "t.yaml")
    p = c.policy_for(4)
    assert p.limits == DomainLimits(max_calls=3, max_total_pages=600)
    assert p.deny_classes == frozenset({"protmem"})
    assert p.rate is None
    assert c.domain(4).name == "d4"


def test_exports():
    for name in config_pkg.__all__:
        assert hasattr(config_pkg, name)
    assert {"load_config", "Config", "ConfigError", "DomainPolicy", "RateLimit"} <= set(config_pkg.__all__)


# -- every error class, with the exact message --------------------------------------


def test_unknown_key_suggests_the_closest():
    assert one_problem("""\
        tee:
          thread: 4
        """) == "t.yaml:2: tee.thread: unknown key (did you mean 'threads'?)"


def test_unknown_key_in_the_wrong_section():
    assert one_problem("placement: el2\n") == (
        "t.yaml:1: placement: unknown key (did you mean mediator.placement?)")


def test_unknown_key_without_suggestion():
    assert one_problem("mediator: {zzz: 1}\n") == "t.yaml:1: mediator.zzz: unknown key"


def test_bool_is_not_int():
    assert one_problem("""\
        tee:
          threads: true
        """) == "t.yaml:2: tee.threads: expected an int, got true (a bool)"


def test_string_is_not_int():
    assert one_problem("platform: {seed: '4'}\n") == (
        "t.yaml:1: platform.seed: expected an int, got '4' (a string)")


def test_int_is_not_bool():
    assert one_problem("tee: {prealloc_rpc_cache: 1}\n") == (
        "t.yaml:1: tee.prealloc_rpc_cache: expected a bool (true or false), got 1 (an int)")


def test_section_must_be_a_mapping():
    assert one_problem("mediator: [1, 2]\n") == "t.yaml:1: mediator: expected a mapping, got a list"


def test_out_of_range_names_file_line_and_path():
    assert one_problem("""\
        domains:
          - domid: 0
          - domid: 1
            limits:
              pages_per_buffer: 0
        """) == "t.yaml:5: domains[1].limits.pages_per_buffer: 0 is out of range 1..16384"


def test_unknown_choice_suggests():
    assert one_problem("mediator: {placement: stubdomain}\n") == (
        "t.yaml:1: mediator.placement: 'stubdomain' is not one of el2, stubdom "
        "(did you mean 'stubdom'?)")


def test_duplicate_key_in_a_mapping():
    assert one_problem("""\
        mediator:
          ring_pages: 1
          ring_pages: 2
        """) == "t.yaml:3: mediator.ring_pages: duplicate key (first given at line 2)"


def test_duplicate_domid():
    assert one_problem("""\
        domains:
          - domid: 1
          - domid: 2
          - domid: 1
        """) == "t.yaml:4: domains[2].domid: domid 1 is already declared at line 2"


def test_missing_domid():
    assert one_problem("""\
        domains:
          - name: x
        """) == "t.yaml:2: domains[0]: missing required key 'domid'"


def test_malformed_uuid():
    assert one_problem("""\
        defaults:
          ta_deny:
            - 8aaaf200-2450-11e4-abe2-0002a5d5c51b
            - 8aaaf200245011e4abe20002a5d5c51b
        """) == ("t.yaml:4: defaults.ta_deny[1]: '8aaaf200245011e4abe20002a5d5c51b' is not a UUID "
                 "(expected 8-4-4-4-12 hex digits)")


def test_uuid_in_both_lists():
    u = "8aaaf200-2450-11e4-abe2-0002a5d5c51b"
    assert one_problem(f"""\
        defaults:
          ta_allow: [{u}]
          ta_deny: [{u}]
        """) == f"t.yaml:3: defaults.ta_deny: {u} is also in ta_allow: list it in one of them"


def test_unknown_function_class():
    assert one_problem("defaults: {deny_classes: [std_cal]}\n") == (
        "t.yaml:1: defaults.deny_classes[0]: 'std_cal' is not one of info, capabilities, shm_config, "
        "shm_cache, thread_count, std_call, rpc_return, async_notif, protmem, platform, hypervisor, "
        "unknown (did you mean 'std_call'?)")


def test_hypervisor_class_cannot_be_allowed():
    assert one_problem("defaults: {allow_classes: [info, hypervisor]}\n") == (
        "t.yaml:1: defaults.allow_classes: 'hypervisor' can never be allowed: "
        "VM_CREATED/VM_DESTROYED are the hypervisor's own calls")


def test_rpc_return_cannot_be_denied():
    assert one_problem("defaults: {deny_classes: [rpc_return]}\n") == (
        "t.yaml:1: defaults.deny_classes: 'rpc_return' cannot be denied: RETURN_FROM_RPC continues "
        "a call already admitted, refusing it would strand an OP-TEE thread")


def test_listed_twice():
    assert one_problem("""\
        defaults:
          deny_classes:
            - protmem
            - protmem
        """) == "t.yaml:4: defaults.deny_classes[1]: 'protmem' is listed twice (first at line 3)"


def test_unknown_capability():
    assert one_problem("tee: {capabilities: [dynamic_shm, virtualization, memref_null, dyn_shm]}\n") == (
        "t.yaml:1: tee.capabilities[3]: 'dyn_shm' is not one of reserved_shm, unregistered_shm, "
        "dynamic_shm, virtualization, memref_null, async_notif, rpc_arg, rpmb_probe, protmem, "
        "dynamic_protmem (did you mean 'dynamic_shm'?)")


def test_capability_the_model_does_not_implement():
    assert one_problem("tee: {capabilities: [dynamic_shm, virtualization, memref_null, async_notif]}\n") == (
        "t.yaml:1: tee.capabilities[3]: 'async_notif' is a feature the TEE model does not implement "
        "(it implements reserved_shm, dynamic_shm, virtualization, memref_null, rpc_arg)")


def test_required_capabilities():
    assert one_problem("tee: {capabilities: [reserved_shm]}\n") == (
        "t.yaml:1: tee.capabilities: dynamic_shm, virtualization, memref_null missing: the model is an "
        "NS-virtualization build with NULL memrefs, and the mediator needs dynamic shared memory")


def test_more_than_one_hwdom():
    assert one_problem("""\
        domains:
          - {domid: 0, hwdom: true}
          - domid: 5
            hwdom: true
        """) == "t.yaml:4: domains[1].hwdom: a second hardware domain (the first is declared at line 2)"


def test_guest_count_too_small():
    assert one_problem("""\
        tee:
          guest_count: 2
        domains:
          - {domid: 0}
          - {domid: 1}
          - {domid: 2, enabled: false}
          - {domid: 3}
        """) == ("t.yaml:2: tee.guest_count: 2 guest partition(s) cannot hold the 3 enabled domains "
                 "declared (domids 0, 1, 3)")


def test_static_shm_only_for_direct_mapped_hwdom():
    assert problems("""\
        domains:
          - domid: 1
            static_shm: true
            static_shm_allowed: true
        """) == [
        "t.yaml:3: domains[0].static_shm: only the hardware domain, direct-mapped, may map the static "
        "shm region",
        "t.yaml:4: domains[0].static_shm_allowed: only the hardware domain, direct-mapped, may use the "
        "static shm region",
    ]


def test_static_shm_needs_reserved_shm():
    assert one_problem("""\
        tee: {capabilities: [dynamic_shm, virtualization, memref_null]}
        domains:
          - {domid: 0, hwdom: true, direct_mapped: true, static_shm: true}
        """) == ("t.yaml:3: domains[0].static_shm: tee.capabilities has no reserved_shm: there is no "
                 "static region to map")


def test_pages_per_buffer_above_total_pages():
    assert one_problem("""\
        defaults:
          limits:
            pages_per_buffer: 200
            total_pages: 100
        """) == ("t.yaml:2: defaults.limits: pages_per_buffer 200 exceeds total_pages 100: no buffer of "
                 "that size could ever be pinned")


def test_rate_needs_both_keys_and_positive_rate():
    assert problems("""\
        defaults:
          rate: {calls_per_second: 0}
        """) == [
        "t.yaml:2: defaults.rate.calls_per_second: 0 is out of range 0 < x <= 1e+06",
        "t.yaml:2: defaults.rate: missing required key 'burst'",
    ]


def test_static_shm_alignment_and_placement():
    assert problems("""\
        platform: {nr_frames: 1024}
        tee:
          static_shm:
            base: 0x42000800
            size: 0x1000
        """) == [
        "t.yaml:4: tee.static_shm.base: 0x42000800 is not page aligned",
        "t.yaml:4: tee.static_shm: [0x42000800, 0x42001800) is not inside machine RAM "
        "[0x40000000, 0x40400000) (platform.nr_frames 1024)",
    ]


def test_machine_too_small_for_domains():
    assert one_problem("""\
        platform:
          nr_frames: 9000
        domains:
          - {domid: 1, nr_pages: 8000}
          - {domid: 2, nr_pages: 8000}
        """) == ("t.yaml:2: platform.nr_frames: 9000 frames cannot hold the declared domains' 16000 pages "
                 "plus the static shm region's 512")


def test_non_string_key():
    assert one_problem("mediator: {1: 2}\n") == "t.yaml:1: mediator: keys must be plain strings, got '1'"


def test_yaml_syntax_error():
    got = one_problem("mediator: {ring_pages: 1\n")
    assert got.startswith("t.yaml:2: YAML syntax: ")


@pytest.mark.parametrize("text, want", [
    # an unclosed flow sequence: noticed two lines down, opened on line 2
    ("mediator:\n  placement: [el2,\n  ring_pages: 2\ntee:\n  threads: 3\n",
     "t.yaml:4: YAML syntax: expected ',' or ']', but got ':' (while parsing a flow sequence, which started "
     "at line 2, column 14)"),
    # an unclosed quote: noticed at the end of the file
    ('mediator:\n  runtime_dir: "/tmp/x\n  ring_pages: 2\n',
     "t.yaml:4: YAML syntax: found unexpected end of stream (while scanning a quoted scalar, which started at "
     "line 2, column 16)"),
])
def test_yaml_syntax_error_names_where_the_construct_started(text, want):
    """Issue 15, item 8: the line where PyYAML noticed the problem
    (problem_mark) and the one where the unclosed construct began
    (context_mark)."""
    assert one_problem(text) == want


def test_runtime_dir_of_reads_that_key_alone(tmp_path):
    """Issue 15, item 9: ctl needs the socket's directory only; the rest of a
    file being edited may be wrong."""
    f = tmp_path / "c.yaml"
    f.write_text("mediator:\n  runtime_dir: rt\n  ring_pages: -4\nbogus: 1\ntee: {threads: true}\n")
    with pytest.raises(ConfigError):
        load_config(f)
    assert runtime_dir_of(f) == tmp_path.resolve() / "rt"
    f.write_text("tee: {threads: true}\n")  # no runtime_dir: the default, as load_config chooses it
    assert runtime_dir_of(f) == default_runtime_dir()
    f.write_text("mediator:\n  runtime_dir: 7\n")  # the key itself wrong: said as load_config says it
    with pytest.raises(ConfigError) as e:
        runtime_dir_of(f)
    assert list(e.value.problems) == [f"{f}:2: mediator.runtime_dir: expected a path (string), got 7 (an int)"]


@pytest.mark.parametrize("value, want", [
    # found by the config_yaml harness: the daemon died with PyYAML's ConstructorError
    ("!4096", "cannot read the value: could not determine a constructor for the tag '!4096'"),
    ('!!python/name:os.system ""', "cannot read the value: could not determine a constructor for the tag "
                                   "'tag:yaml.org,2002:python/name:os.system'"),
    ("!!int abc", "'abc' is not a valid !!int"),
    ("!!float x", "'x' is not a valid !!float"),
    ("!!bool maybe", "'maybe' is not a valid !!bool"),
    ("!!timestamp x", "'x' is not a valid !!timestamp"),
])
def test_a_tag_that_cannot_be_read_is_a_problem_at_its_line(value, want):
    assert one_problem(f"platform:\n  nr_frames: {value}\n") == f"t.yaml:2: platform.nr_frames: {want}"


def test_unreadable_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    (msg,) = info.value.problems
    assert msg.startswith(f"{missing}: cannot read the configuration: ")


def test_all_problems_at_once_each_on_its_own_line(tmp_path):
    f = tmp_path / "xen.yaml"
    f.write_text(textwrap.dedent("""\
        tee:
          threads: 0
        mediator:
          log_level: verbose
        domains:
          - domid: 1
            vcpus: 0
          - domid: 1
        """))
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert info.value.problems == (
        f"{f}:2: tee.threads: 0 is out of range 1..64",
        f"{f}:4: mediator.log_level: 'verbose' is not one of debug, info, warning, error",
        f"{f}:7: domains[0].vcpus: 0 is out of range 1..128",
        f"{f}:8: domains[1].domid: domid 1 is already declared at line 6",
    )
    assert str(info.value).splitlines() == ["4 problems in the configuration:", *info.value.problems]


def test_schema_sections_are_all_documented_keys():
    # every key has a doc string and a kind the loader knows
    for path, key in key_paths(SCHEMA):
        assert key.doc, path


def test_ta_kinds_say_which_tas_are_loaded_from_the_ree():
    assert load_config(CONFIGS / "xen.yaml").tee.ree_tas == frozenset({"increment", "digest", "storage"})
    c = parse_config("tee:\n  tas: {increment: early, wait: ree}\n", "x.yaml")
    assert c.tee.ree_tas == frozenset({"digest", "storage", "wait"})
    assert parse_config("", "x.yaml").tee.ree_tas == TeeConfig().ree_tas
    with pytest.raises(ConfigError, match=r"x\.yaml:2: tee\.tas\.digest: 'reee' is not one of early, ree "
                                          r"\(did you mean 'ree'\?\)"):
        parse_config("tee:\n  tas: {digest: reee}\n", "x.yaml")
    with pytest.raises(ConfigError, match=r"x\.yaml:2: tee\.tas\.hello: unknown key"):
        parse_config("tee:\n  tas: {hello: ree}\n", "x.yaml")
