"""Load and validate a YAML configuration.

PyYAML composes the document into nodes (SafeLoader rules), which keep
their line numbers; the loader walks the nodes against the schema, so every
problem names ``file:line: key.path``.  It collects every problem before
raising one :class:`ConfigError` with all of them.  The same function serves
startup (print and exit) and reload (hand the problems back, keep the old
configuration).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from stubdom.mediator.limits import DomainLimits
from stubdom.mediator.profile import Profile, profile_named
from stubdom.optee.smc import (
    OPTEE_SMC_SEC_CAP_DYNAMIC_SHM,
    OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM,
)
from stubdom.policy.classes import ALWAYS_ALLOWED_CLASSES, NEVER_ALLOWED_CLASSES
from stubdom.rundir import default_runtime_dir
from stubdom.xen.constants import DEFAULT_RAM_BASE

from .datatypes import Converter, Invalid, PathValue, closest
from .errors import BadTeeConfig, ConfigError
from .model import (
    Config,
    DomainConfig,
    DomainPolicy,
    MediatorConfig,
    PlatformConfig,
    RateLimit,
    StaticShmConfig,
)
from .schema import (
    CAPABILITY_BITS,
    POLICY_KEYS,
    REQUIRED,
    SCHEMA,
    Key,
    ListOf,
    Section,
    SectionList,
    key_paths,
)
from .tee import REQUIRED_SEC_CAPS, SUPPORTED_SEC_CAPS, TeeConfig

__all__ = ["load_config", "parse_config", "runtime_dir_of", "EMBEDDED_NAME"]

# The embedded default: stubdom/config/xen.yaml, a link to configs/xen.yaml.
EMBEDDED_PACKAGE = "stubdom.config"
EMBEDDED_NAME = "xen.yaml"

_PAGE = 4096
_CAP_NAME = {bit: name for name, bit in CAPABILITY_BITS.items()}
_POLICY_NAMES = frozenset(k.name for k in POLICY_KEYS)
# the limits section's keys by the DomainLimits field each fills
_LIMIT_KEYS = {"max_calls": "calls_in_flight", "max_shm_buffers": "shm_buffers",
               "max_pages_per_buffer": "pages_per_buffer", "max_total_pages": "total_pages"}


def load_config(path: str | Path | None) -> Config:
    """The configuration in ``path``; None = the embedded default
    (configs/xen.yaml).  Raises ConfigError listing every problem."""
    if path is None:
        res = resources.files(EMBEDDED_PACKAGE).joinpath(EMBEDDED_NAME)
        text = res.read_text(encoding="utf-8")
        return parse_config(text, f"<embedded>/{EMBEDDED_NAME}", base_dir=None)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read the configuration: {e}"]) from None
    if _compose(text, str(path)) is None:
        raise _empty(path)
    return parse_config(text, str(path), base_dir=path.resolve().parent)


def _empty(path: Path) -> ConfigError:
    # a wrong path, an editor that saved nothing: not "every default"
    return ConfigError([f"{path}:1: (top level): the file is empty (no key, only whitespace or "
                        f"comments); write the sections you mean, or {{}} for every default"])


def parse_config(text: str, source: str, *, base_dir: Path | None = None) -> Config:
    """Validate configuration ``text``; ``source`` names it in messages and
    relative paths in it are taken from ``base_dir`` (default: the current
    directory). An empty text is every default (:func:`load_config`
    refuses an empty file)."""
    root = _compose(text, source)
    if root is None:  # an empty document: every default
        root = yaml.MappingNode("tag:yaml.org,2002:map", [])
    walker = _Walker(source, base_dir)
    values = walker.section(root, SCHEMA, "")
    config = None
    if values is not None:
        config = walker.build(values)
    if walker.problems:
        walker.problems.sort(key=lambda p: p[0])
        raise ConfigError([f"{source}:{line}: {msg}" for line, msg in walker.problems])
    assert config is not None
    return config


def _compose(text: str, source: str) -> yaml.Node | None:
    """The document's root node (None: nothing in it); ConfigError for a
    syntax error, at the line where the parser noticed it, naming where the
    construct it was in started."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        raise ConfigError([_syntax_problem(source, e)]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{source}: YAML: {e}"]) from None
    return root


def _syntax_problem(source: str, e: yaml.MarkedYAMLError) -> str:
    """``file:line: YAML syntax: <problem> (<context> at line N, column C)``:
    the line is where PyYAML noticed the problem (problem_mark), which for an
    unclosed bracket or quote is far below where it was opened
    (context_mark)."""
    problem, context = e.problem_mark, e.context_mark
    mark = problem or context
    line = mark.line + 1 if mark is not None else 1
    text = e.problem or "malformed YAML"
    if e.context and context is not None and (problem is None or context.line != problem.line
                                              or context.column != problem.column):
        text += f" ({e.context}, which started at line {context.line + 1}, column {context.column + 1})"
    elif e.context:
        text = f"{e.context}: {text}"
    return f"{source}:{line}: YAML syntax: {text}"


def runtime_dir_of(path: str | Path | None) -> Path:
    """Only ``mediator.runtime_dir`` of the configuration in ``path`` (None:
    the embedded default), resolved as :func:`load_config` resolves it: what
    ``stubdom-teed ctl`` needs to find the control socket, so that a
    mistake elsewhere in the file (one being edited) does not stop it.
    ConfigError only for what makes that one key unreadable: the file, its
    YAML syntax, or the key itself."""
    if path is None:
        return load_config(None).mediator.runtime_dir
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read the configuration: {e}"]) from None
    source = str(path)
    root = _compose(text, source)
    if root is None:
        raise _empty(path)
    node = _child(_child(root, "mediator"), "runtime_dir")
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
        return default_runtime_dir()
    walker = _Walker(source, path.resolve().parent)
    key = SCHEMA.by_name["mediator"].section.by_name["runtime_dir"]
    ok, value = walker.value(node, key, "mediator.runtime_dir")
    if not ok:
        walker.problems.sort(key=lambda p: p[0])
        raise ConfigError([f"{source}:{line}: {msg}" for line, msg in walker.problems])
    return default_runtime_dir() if value is None else value


def _child(node: yaml.Node | None, name: str) -> yaml.Node | None:
    """The value node of key ``name`` in a mapping node (the last one given),
    None if there is none."""
    if not isinstance(node, yaml.MappingNode):
        return None
    found = None
    for knode, vnode in node.value:
        if isinstance(knode, yaml.ScalarNode) and knode.value == name:
            found = vnode
    return found


def _hint(name: str, section: Section) -> str:
    """Suggest the closest key of this section, else where the key lives."""
    near = closest(name, section.by_name)
    if near:
        return near
    elsewhere = [p for p, _ in key_paths() if p.rpartition(".")[2] == name]
    return f" (did you mean {elsewhere[0]}?)" if elsewhere else ""


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _Walker:
    """One validation pass: converts nodes to values, remembers the line of
    every key path, and collects problems as (line, "path: message")."""

    def __init__(self, source: str, base_dir: Path | None) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[tuple[int, str]] = []
        self.lines: dict[str, int] = {}
        self._constructor = yaml.SafeLoader("")

    def problem(self, line: int, path: str, message: str) -> None:
        self.problems.append((line, f"{path}: {message}" if path else message))

    # -- walking the nodes -----------------------------------------------------

    def section(self, node: yaml.Node, section: Section, path: str) -> dict[str, Any] | None:
        """The keys given in a mapping node, converted; None if it is not a mapping."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(_line(node), path or "(top level)",
                         f"expected a mapping, got {self._kind(node)}")
            return None
        out: dict[str, Any] = {}
        first: dict[str, int] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode) or knode.tag != "tag:yaml.org,2002:str":
                self.problem(_line(knode), path or "(top level)",
                             f"keys must be plain strings, got {self._kind(knode)}")
                continue
            name = knode.value
            sub = f"{path}.{name}" if path else name
            if name in first:
                # PyYAML keeps the last of two equal keys silently: refuse.
                self.problem(_line(knode), sub, f"duplicate key (first given at line {first[name]})")
                continue
            first[name] = _line(knode)
            key = section.by_name.get(name)
            if key is None:
                self.problem(_line(knode), sub, "unknown key" + _hint(name, section))
                continue
            self.lines[sub] = _line(knode)
            ok, value = self.value(vnode, key, sub)
            if ok:
                out[name] = value
        for key in section.keys:
            if key.default is REQUIRED and key.name not in first:
                self.problem(_line(node), path or "(top level)", f"missing required key {key.name!r}")
        return out

    def value(self, node: yaml.Node, key: Key, path: str) -> tuple[bool, Any]:
        """(True, converted value) or (False, None) after reporting."""
        if key.nullable and isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return True, None
        kind = key.kind
        if isinstance(kind, Section):
            out = self.section(node, kind, path)
            return out is not None, out
        if isinstance(kind, SectionList):
            if not isinstance(node, yaml.SequenceNode):
                self.problem(_line(node), path, f"expected {kind.type_name}, got {self._kind(node)}")
                return False, None
            sections = []
            for i, item in enumerate(node.value):
                sub = f"{path}[{i}]"
                self.lines[sub] = _line(item)
                got = self.section(item, kind.section, sub)
                sections.append(got)
            return True, sections
        if isinstance(kind, ListOf):
            if not isinstance(node, yaml.SequenceNode):
                self.problem(_line(node), path, f"expected {kind.type_name}, got {self._kind(node)}")
                return False, None
            items: list[object] = []
            seen: dict[object, int] = {}
            ok = True
            for i, item in enumerate(node.value):
                sub = f"{path}[{i}]"
                good, v = self.scalar(item, kind.item, sub)
                if not good:
                    ok = False
                    continue
                if v in seen:
                    self.problem(_line(item), sub, f"{item.value!r} is listed twice (first at line {seen[v]})")
                    ok = False
                    continue
                seen[v] = _line(item)
                self.lines[sub] = _line(item)
                items.append(v)
            return ok, tuple(items)
        return self.scalar(node, kind, path)

    def scalar(self, node: yaml.Node, conv: Converter, path: str) -> tuple[bool, Any]:
        if isinstance(conv, PathValue):
            conv = conv.with_base(self.base_dir)
        if isinstance(node, yaml.ScalarNode):
            try:
                raw = self._constructor.construct_object(node, deep=True)
            except yaml.YAMLError as e:  # an unknown tag: "!4096", "!!python/name:..."
                self.problem(_line(node), path, f"cannot read the value: {getattr(e, 'problem', None) or e}")
                return False, None
            except (ValueError, KeyError, AttributeError, TypeError):
                # a YAML type tag whose constructor refuses the text ("!!int abc", "!!bool maybe")
                tag = node.tag.replace("tag:yaml.org,2002:", "!!")
                self.problem(_line(node), path, f"{node.value!r} is not a valid {tag}")
                return False, None
        else:
            raw = [] if isinstance(node, yaml.SequenceNode) else {}
        try:
            return True, conv(raw)
        except Invalid as e:
            self.problem(_line(node), path, str(e))
            return False, None

    @staticmethod
    def _kind(node: yaml.Node) -> str:
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        return f"{node.value!r}"

    def line(self, path: str, fallback: str = "") -> int:
        """The line of ``path``, else of the nearest enclosing key given."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path.rpartition(".")[0] if "." in path else ""
        return self.lines.get(fallback, 1)

    # -- building the records, with the checks across keys --------------------

    def build(self, v: dict[str, Any]) -> Config | None:
        tee_v = v.get("tee") or {}
        platform_v = v.get("platform") or {}
        mediator_v = v.get("mediator") or {}
        tee = self.build_tee(tee_v)
        static = self.build_static_shm(tee_v.get("static_shm") or {}, platform_v)
        mediator_kv = {k.name: mediator_v.get(k.name, k.default) for k in SCHEMA.by_name["mediator"].section.keys}
        if mediator_kv["runtime_dir"] is None:  # chosen here, for the user loading the file
            mediator_kv["runtime_dir"] = default_runtime_dir()
        mediator = MediatorConfig(**mediator_kv)
        platform = PlatformConfig(**{k.name: platform_v.get(k.name, k.default)
                                     for k in SCHEMA.by_name["platform"].section.keys})
        defaults_v = v.get("defaults") or {}
        profile = profile_named(mediator.profile)
        default_policy = self.build_policy(defaults_v, {}, "defaults", declared=None, profile=profile)
        domains = self.build_domains(v.get("domains") or [], defaults_v, tee, profile)
        self.check_machine(platform, static, domains)
        if self.problems or tee is None or default_policy is None or domains is None:
            return None
        return Config(tee=tee, static_shm=static, mediator=mediator, platform=platform,
                      domains=domains, default_policy=default_policy, source=self.source)

    def build_tee(self, t: dict[str, Any]) -> TeeConfig | None:
        key = SCHEMA.by_name["tee"].section.by_name
        names = t.get("capabilities", key["capabilities"].default)
        caps = 0
        for i, name in enumerate(names):
            bit = CAPABILITY_BITS[name]
            if not bit & SUPPORTED_SEC_CAPS:
                supported = ", ".join(n for n, b in CAPABILITY_BITS.items() if b & SUPPORTED_SEC_CAPS)
                self.problem(self.line(f"tee.capabilities[{i}]", "tee"), f"tee.capabilities[{i}]",
                             f"{name!r} is a feature the TEE model does not implement "
                             f"(it implements {supported})")
            caps |= bit
        cap_line = self.line("tee.capabilities", "tee")
        missing = [n for n, b in CAPABILITY_BITS.items()
                   if b & (REQUIRED_SEC_CAPS | OPTEE_SMC_SEC_CAP_DYNAMIC_SHM) and not caps & b]
        if missing:
            self.problem(cap_line, "tee.capabilities",
                         f"{', '.join(missing)} missing: the model is an NS-virtualization build "
                         f"with NULL memrefs, and the mediator needs dynamic shared memory")
            return None
        rev = t.get("os_revision") or {}
        rkeys = key["os_revision"].section.keys
        rv = {k.name: rev.get(k.name, k.default) for k in rkeys}
        fields = dict(
            threads_per_guest=t.get("threads", key["threads"].default),
            guest_count=t.get("guest_count", key["guest_count"].default),
            sec_caps=caps & SUPPORTED_SEC_CAPS,
            os_revision_major=rv["major"],
            os_revision_minor=rv["minor"],
            os_build_id=rv["build_id"],
            prealloc_rpc_cache=t.get("prealloc_rpc_cache", key["prealloc_rpc_cache"].default),
            wait_ta_foreign_intr=t.get("wait_ta_foreign_intr", key["wait_ta_foreign_intr"].default),
            max_shm_pages=t.get("max_shm_pages", key["max_shm_pages"].default),
        )
        tas = t.get("tas") or {}
        kinds = {k.name: tas.get(k.name, k.default) for k in key["tas"].section.keys}
        if any(x is None for x in kinds.values()):
            return None
        fields["ree_tas"] = frozenset(name for name, kind in kinds.items() if kind == "ree")
        if any(x is None for x in fields.values()):
            return None
        try:
            return TeeConfig(**fields)
        except BadTeeConfig as e:  # every field was checked above; keep the model's word
            self.problem(self.line("tee"), "tee", str(e))
            return None

    def build_static_shm(self, s: dict[str, Any], platform_v: dict[str, Any]) -> StaticShmConfig:
        keys = SCHEMA.by_name["tee"].section.by_name["static_shm"].section.by_name
        base = s.get("base", keys["base"].default)
        size = s.get("size", keys["size"].default)
        if base % _PAGE:
            self.problem(self.line("tee.static_shm.base", "tee"), "tee.static_shm.base",
                         f"{base:#x} is not page aligned")
        if size % _PAGE:
            self.problem(self.line("tee.static_shm.size", "tee"), "tee.static_shm.size",
                         f"{size:#x} is not a whole number of pages")
        nr_frames = platform_v.get("nr_frames", SCHEMA.by_name["platform"].section.by_name["nr_frames"].default)
        ram_end = DEFAULT_RAM_BASE + nr_frames * _PAGE
        if not DEFAULT_RAM_BASE <= base or base + size > ram_end:
            self.problem(self.line("tee.static_shm.base", "tee"), "tee.static_shm",
                         f"[{base:#x}, {base + size:#x}) is not inside machine RAM "
                         f"[{DEFAULT_RAM_BASE:#x}, {ram_end:#x}) (platform.nr_frames {nr_frames})")
        return StaticShmConfig(base, size)

    def build_policy(self, d: dict[str, Any], base: dict[str, Any], path: str,
                     declared: dict[str, Any] | None, profile: Profile) -> DomainPolicy | None:
        """A policy from the keys in ``d``, each missing one taken from
        ``base`` (the defaults section), then from the schema. A limit the
        file gives above ``profile``'s bound is refused (one it leaves out
        is bounded by the mediator: docs/config.md)."""
        def get(key: Key) -> Any:
            if key.name in d:
                return d[key.name]
            if key.name in base:
                return base[key.name]
            return key.default

        keys = {k.name: k for k in POLICY_KEYS}
        where = lambda name: self.line(f"{path}.{name}", path)  # noqa: E731
        ok = True
        allow = frozenset(get(keys["allow_classes"]) or ())
        deny = frozenset(get(keys["deny_classes"]) or ())
        for name in sorted(allow & NEVER_ALLOWED_CLASSES):
            self.problem(where("allow_classes"), f"{path}.allow_classes",
                         f"{name!r} can never be allowed: VM_CREATED/VM_DESTROYED are the hypervisor's own calls")
            ok = False
        for name in sorted(deny & ALWAYS_ALLOWED_CLASSES):
            self.problem(where("deny_classes"), f"{path}.deny_classes",
                         f"{name!r} cannot be denied: RETURN_FROM_RPC continues a call already "
                         f"admitted, refusing it would strand an OP-TEE thread")
            ok = False
        ta_allow = get(keys["ta_allow"])
        ta_allow = None if ta_allow is None else frozenset(ta_allow)
        ta_deny = frozenset(get(keys["ta_deny"]) or ())
        if ta_allow is not None:
            for u in sorted(ta_allow & ta_deny, key=str):
                self.problem(where("ta_deny"), f"{path}.ta_deny",
                             f"{u} is also in ta_allow: list it in one of them")
                ok = False
        lim = {**(base.get("limits") or {}), **(d.get("limits") or {})}
        lkeys = {k.name: k for k in keys["limits"].section.keys}
        lv = {n: lim.get(n, k.default) for n, k in lkeys.items()}
        if lv["pages_per_buffer"] > lv["total_pages"]:
            self.problem(where("limits"), f"{path}.limits",
                         f"pages_per_buffer {lv['pages_per_buffer']} exceeds total_pages "
                         f"{lv['total_pages']}: no buffer of that size could ever be pinned")
            ok = False
        limits = DomainLimits(max_calls=lv["calls_in_flight"], max_shm_buffers=lv["shm_buffers"],
                              max_pages_per_buffer=lv["pages_per_buffer"],
                              max_total_pages=lv["total_pages"])
        for field, (value, most) in profile.exceeded(limits).items():
            name = _LIMIT_KEYS[field]
            if name in (d.get("limits") or {}):  # given here (not inherited, not a schema default)
                self.problem(self.line(f"{path}.limits.{name}", path), f"{path}.limits.{name}",
                             f"{value} exceeds the {profile.name} profile's {most} "
                             f"(mediator.profile {profile.name}: a policy may lower its limits, not raise them)")
                ok = False
        rate_v = get(keys["rate"])
        rate = None
        if rate_v is not None:
            if "calls_per_second" not in rate_v or "burst" not in rate_v:
                ok = False  # reported as a missing key already
            else:
                rate = RateLimit(rate_v["calls_per_second"], rate_v["burst"])
        if "static_shm_allowed" in d and d["static_shm_allowed"] and not profile.static_shm:
            self.problem(where("static_shm_allowed"), f"{path}.static_shm_allowed",
                         f"the {profile.name} profile gives no domain the static shm region "
                         f"(as Xen drops HAVE_RESERVED_SHM for every guest)")
            ok = False
        if declared is not None and get(keys["static_shm_allowed"]) and not (
                declared.get("hwdom") and declared.get("direct_mapped")):
            self.problem(where("static_shm_allowed"), f"{path}.static_shm_allowed",
                         "only the hardware domain, direct-mapped, may use the static shm region")
            ok = False
        if not ok:
            return None
        return DomainPolicy(
            enabled=get(keys["enabled"]),
            static_shm_allowed=get(keys["static_shm_allowed"]),
            allow_classes=allow, deny_classes=deny, ta_allow=ta_allow, ta_deny=ta_deny,
            limits=limits, rate=rate, log_level=get(keys["log_level"]),
        )

    def build_domains(self, items: list[dict[str, Any] | None], defaults_v: dict[str, Any],
                      tee: TeeConfig | None, profile: Profile) -> tuple[DomainConfig, ...] | None:
        keys = SCHEMA.by_name["domains"].section_list.section.by_name
        out: list[DomainConfig] = []
        ok = True
        domid_at: dict[int, int] = {}
        hwdom_at: int | None = None
        for i, d in enumerate(items):
            path = f"domains[{i}]"
            if d is None or "domid" not in d:
                ok = False
                continue
            domid = d["domid"]
            domid_line = self.line(f"{path}.domid", path)
            if domid in domid_at:
                self.problem(domid_line, f"{path}.domid",
                             f"domid {domid} is already declared at line {domid_at[domid]}")
                ok = False
            else:
                domid_at[domid] = domid_line
            g = {n: d.get(n, k.default) for n, k in keys.items() if n not in _POLICY_NAMES}
            if g["hwdom"]:
                if hwdom_at is not None:
                    self.problem(self.line(f"{path}.hwdom", path), f"{path}.hwdom",
                                 f"a second hardware domain (the first is declared at line {hwdom_at})")
                    ok = False
                else:
                    hwdom_at = self.line(f"{path}.hwdom", path)
            if g["static_shm"]:
                if not (g["hwdom"] and g["direct_mapped"]):
                    self.problem(self.line(f"{path}.static_shm", path), f"{path}.static_shm",
                                 "only the hardware domain, direct-mapped, may map the static shm region")
                    ok = False
                elif tee is not None and not tee.sec_caps & OPTEE_SMC_SEC_CAP_HAVE_RESERVED_SHM:
                    self.problem(self.line(f"{path}.static_shm", path), f"{path}.static_shm",
                                 "tee.capabilities has no reserved_shm: there is no static region to map")
                    ok = False
            policy = self.build_policy(d, defaults_v, path, declared=g, profile=profile)
            if policy is None:
                ok = False
                continue
            out.append(DomainConfig(domid=domid, name=g["name"] or f"d{domid}", nr_pages=g["nr_pages"],
                                    vcpus=g["vcpus"], hwdom=g["hwdom"], direct_mapped=g["direct_mapped"],
                                    static_shm=g["static_shm"], policy=policy))
        if tee is not None:
            enabled = [d.domid for d in out if d.policy.enabled]
            if len(enabled) > tee.guest_count:
                self.problem(self.line("tee.guest_count", "tee"), "tee.guest_count",
                             f"{tee.guest_count} guest partition(s) cannot hold the {len(enabled)} enabled "
                             f"domains declared (domids {', '.join(map(str, enabled))})")
                ok = False
        return tuple(out) if ok else None

    def check_machine(self, platform: PlatformConfig, static: StaticShmConfig,
                      domains: tuple[DomainConfig, ...] | None) -> None:
        if not domains:
            return
        need = sum(d.nr_pages for d in domains) + static.size // _PAGE
        if need > platform.nr_frames:
            self.problem(self.line("platform.nr_frames", "platform"), "platform.nr_frames",
                         f"{platform.nr_frames} frames cannot hold the declared domains' "
                         f"{need - static.size // _PAGE} pages plus the static shm region's "
                         f"{static.size // _PAGE}")
