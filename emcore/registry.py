"""The plugin registry: loads every ``emcore`` entry point once, each under its own guard.

First-party plugins (``emcore.plugins.*``) come through the same entry-point
group as third-party ones. A broken plugin (import error, invalid hook, a hook
that raises, a malformed record, a duplicate name) is reported by name with the
reason and skipped; the others still load.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
from dataclasses import dataclass
from typing import Iterable, Optional

import pluggy

from emcore import hookspecs
from emcore._version import DISTRIBUTION
from emcore.plugin_api import FamilyRecord, PosteriorRuleRecord, StructureRecord

__all__ = ["ENTRY_POINT_GROUP", "BrokenPlugin", "Registered", "Registry",
           "get_registry", "load_registry", "registered_family"]

ENTRY_POINT_GROUP = "emcore"
_FIRST_PARTY = DISTRIBUTION     # the distribution of the first-party plugins


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that could not be used, and why."""
    name: str
    distribution: str
    reason: str


@dataclass(frozen=True)
class Registered:
    """A record together with the entry point and distribution that provided it."""
    record: object
    plugin: str
    distribution: str


class Registry:
    """Families, posterior rules and latent structures, resolved once from the installed plugins."""

    def __init__(self) -> None:
        self.families: dict[str, Registered] = {}
        self.posterior_rules: dict[str, Registered] = {}
        self.structures: dict[str, Registered] = {}
        self.broken: list[BrokenPlugin] = []
        self.plugin_manager = pluggy.PluginManager("emcore")
        self.plugin_manager.add_hookspecs(hookspecs)

    def family(self, name: str) -> FamilyRecord:
        """Return the family registered under ``name``."""
        return self._lookup(self.families, name, "family").record

    def posterior_rule(self, name: str) -> PosteriorRuleRecord:
        """Return the posterior rule registered under ``name``."""
        return self._lookup(self.posterior_rules, name, "posterior rule").record

    def structure(self, name: str) -> StructureRecord:
        """Return the latent structure registered under ``name``."""
        return self._lookup(self.structures, name, "latent structure").record

    def _lookup(self, table: dict, name: str, kind: str) -> Registered:
        try:
            return table[name]
        except (KeyError, TypeError):
            known = ", ".join(repr(k) for k in sorted(table)) or "none"
            broken = [b.name for b in self.broken]
            hint = f" (broken plugins: {', '.join(broken)})" if broken else ""
            raise ValueError(f"no {kind} named {name!r} is registered; "
                             f"registered: {known}{hint}") from None


def _dist_name(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    try:
        name = dist.name if dist is not None else None
    except Exception:   # no Name field: None (stdlib) or KeyError (importlib_metadata >= 8)
        name = None
    return name or "<unknown distribution>"


def _sorted_entry_points(eps: Iterable[md.EntryPoint]) -> list[md.EntryPoint]:
    # First-party plugins first, so a third party cannot take over their names;
    # then a stable order by distribution and entry-point name.
    unique = {(_dist_name(ep), ep.name, ep.value): ep for ep in eps}
    return [unique[key] for key in sorted(
        unique, key=lambda k: (k[0] != _FIRST_PARTY, k[0].lower(), k[1], k[2]))]


def _reason(exc: BaseException) -> str:
    # one line: pluggy's messages can span several (and list every plugin)
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}"


def load_registry(entry_points: Optional[Iterable[md.EntryPoint]] = None) -> Registry:
    """Load all plugins of the ``emcore`` entry-point group into a new registry.

    Parameters
    ----------
    entry_points : iterable of importlib.metadata.EntryPoint, optional
        Defaults to the installed entry points of the ``emcore`` group.
    """
    if entry_points is None:
        entry_points = md.entry_points(group=ENTRY_POINT_GROUP)
    reg = Registry()
    pm = reg.plugin_manager
    where: dict[str, tuple[str, str]] = {}   # plugin name -> (entry point, distribution)

    for ep in _sorted_entry_points(entry_points):
        dist = _dist_name(ep)
        plugin_name = f"{dist}:{ep.name}"
        try:
            module = ep.load()
        except (Exception, SystemExit) as exc:  # a plugin's import may raise anything
            reg.broken.append(BrokenPlugin(ep.name, dist, f"import failed: {_reason(exc)}"))
            continue
        if pm.is_registered(module):
            # Two entry points naming one module: register it once.
            continue
        if pm.get_plugin(plugin_name) is not None:
            reg.broken.append(BrokenPlugin(
                ep.name, dist, f"entry point name {ep.name!r} is used twice by "
                               f"{dist}; only the first is loaded"))
            continue
        try:
            pm.register(module, name=plugin_name)
            pm.check_pending()
        except Exception as exc:
            if pm.get_plugin(plugin_name) is module:
                pm.unregister(name=plugin_name)
            reg.broken.append(BrokenPlugin(ep.name, dist, f"invalid hook: {_reason(exc)}"))
            continue
        where[plugin_name] = (ep.name, dist)

    _collect(reg, "emcore_register_families", FamilyRecord, reg.families, where, "family")
    _collect(reg, "emcore_register_posterior_rules", PosteriorRuleRecord,
             reg.posterior_rules, where, "posterior rule")
    _collect(reg, "emcore_register_structures", StructureRecord, reg.structures, where,
             "latent structure")
    return reg


def _collect(reg: Registry, hook_name: str, record_type: type, table: dict,
             where: dict, kind: str) -> None:
    caller = getattr(reg.plugin_manager.hook, hook_name)
    impls = {impl.plugin_name: impl for impl in caller.get_hookimpls()}
    # In the registry's own load order (first-party first), so the first plugin
    # to claim a name keeps it, whatever pluggy's call order would be.
    for plugin_name, (ep_name, dist) in where.items():
        impl = impls.get(plugin_name)
        if impl is None:
            continue
        try:
            records = impl.function()
        except (Exception, SystemExit) as exc:
            reg.broken.append(BrokenPlugin(ep_name, dist,
                                           f"{hook_name}() raised {_reason(exc)}"))
            continue
        if records is None:
            records = []
        elif isinstance(records, (record_type, str, bytes)) or not hasattr(
                records, "__iter__"):
            reg.broken.append(BrokenPlugin(
                ep_name, dist, f"{hook_name}() must return a sequence of "
                               f"{record_type.__name__}; got {records!r}"))
            continue
        for record in records:
            if not isinstance(record, record_type):
                reg.broken.append(BrokenPlugin(
                    ep_name, dist, f"{hook_name}() returned {record!r}, "
                                   f"not a {record_type.__name__}"))
                continue
            if record.name in table:
                first = table[record.name]
                reg.broken.append(BrokenPlugin(
                    ep_name, dist, f"duplicate {kind} name {record.name!r}: already "
                                   f"provided by {first.distribution} "
                                   f"(entry point {first.plugin!r}); skipped"))
                continue
            table[record.name] = Registered(record, ep_name, dist)


@functools.lru_cache(maxsize=None)
def get_registry() -> Registry:
    """Return the process-wide registry, loading the plugins on first use."""
    return load_registry()


def registered_family(name: str) -> FamilyRecord:
    """Return the :class:`~emcore.plugin_api.FamilyRecord` registered under ``name``
    (``emcore.registered_family``): for a family built of other registered families,
    such as 'product'. A ValueError names the registered families if none has it."""
    return get_registry().family(name)
