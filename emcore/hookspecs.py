"""Hook specifications of emcore's plugin system (project name ``"emcore"``).

Hooks *register*: each returns typed records (a name, a factory and the declared
capabilities) and is called once, when the registry loads. No hook is ever called
inside the chunk loop: the engine resolves what a fit needs from the records once
and then calls plain methods or a compiled kernel.

A plugin is a module (or object) with functions decorated by
:data:`emcore.plugin_api.hookimpl`, published under the entry-point group
``emcore``::

    # pyproject.toml of a third-party distribution
    [project.entry-points.emcore]
    my_poisson = "my_package.emcore_plugin"

Hooks, by lifecycle (only registration hooks exist so far):
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from emcore.plugin_api import FamilyRecord, PosteriorRuleRecord, StructureRecord

hookspec = pluggy.HookspecMarker("emcore")

__all__ = ["hookspec", "emcore_register_families", "emcore_register_posterior_rules",
           "emcore_register_structures"]


@hookspec
def emcore_register_families() -> Sequence["FamilyRecord"]:
    """Return the component families this plugin provides.

    Called once per registry load (not ``firstresult``: every plugin answers).

    Returns
    -------
    sequence of FamilyRecord
        One record per family. Names must be unique across all installed
        plugins; a duplicate is reported as a broken plugin and skipped. A
        record's capabilities must come from ``emcore.plugin_api.CAPABILITIES``
        (building one with another string raises ValueError, and the plugin is
        reported as broken): at most one ``support:*`` says where x lives.
    """
    raise NotImplementedError   # a specification: pluggy calls the plugins' hooks


@hookspec
def emcore_register_posterior_rules() -> Sequence["PosteriorRuleRecord"]:
    """Return the posterior rules (soft, hard, constrained, ...) this plugin provides.

    Called once per registry load (not ``firstresult``: every plugin answers).

    Returns
    -------
    sequence of PosteriorRuleRecord
        One record per rule, names unique across all installed plugins.
    """
    raise NotImplementedError   # a specification: pluggy calls the plugins' hooks


@hookspec
def emcore_register_structures() -> Sequence["StructureRecord"]:
    """Return the latent structures (how z is linked: 'mixture', 'markov_chain', ...)
    this plugin provides.

    Called once per registry load (not ``firstresult``: every plugin answers).

    Returns
    -------
    sequence of StructureRecord
        One record per structure, names unique across all installed plugins.
    """
    raise NotImplementedError   # a specification: pluggy calls the plugins' hooks
