"""The plugin registry: entry-point group ``emcore``, per-plugin guards, records.

Third-party plugins are *installed in the test*: real ``*.dist-info`` directories
(METADATA + entry_points.txt) written to a temporary directory put on sys.path, so
``importlib.metadata`` discovers them exactly as it would an installed
distribution. Fresh registries are built with ``load_registry()``; the process-wide
cached ``get_registry()`` is never loaded while such a directory is on sys.path.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

import emcore
from emcore import registry as registry_mod
from emcore._version import DISTRIBUTION
from emcore.datasets import load_old_faithful
from emcore.plugin_api import FamilyRecord, PosteriorRuleRecord
from emcore.registry import ENTRY_POINT_GROUP, BrokenPlugin, get_registry, load_registry

from _commands import emcore_command

GAUSSIAN_MODULE = "emcore.plugins.gaussian"
POSTERIOR_MODULE = "emcore.plugins.posterior"


# --- installing throw-away distributions ---------------------------------------------

class Installer:
    """Writes distributions (dist-info + plugin modules) into one sys.path directory.

    Module names get a per-test unique prefix (``m("name")``) so that no two tests
    share a module in ``sys.modules``; the fixture removes them afterwards.
    """

    def __init__(self, root: Path):
        self.root = root
        self.prefix = f"emcore_testplugin_{uuid.uuid4().hex[:10]}_"

    def m(self, name: str) -> str:
        return self.prefix + name

    def module(self, name: str, source: str) -> str:
        mod = self.m(name)
        (self.root / f"{mod}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        return mod

    def dist(self, name: str, entry_points, version: str = "0.1",
             metadata: str | None = None) -> None:
        """``entry_points``: list of (entry point name, value) in the emcore group."""
        info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        if metadata is None:
            metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        (info / "METADATA").write_text(metadata, encoding="utf-8")
        lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{ep} = {value}" for ep, value in entry_points]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        importlib.invalidate_caches()

    def cleanup(self) -> None:
        for name in [n for n in sys.modules if n.startswith(self.prefix)]:
            del sys.modules[name]


@pytest.fixture
def installer(tmp_path, monkeypatch):
    inst = Installer(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield inst
    inst.cleanup()


GOOD_FAMILY_SOURCE = """
    import numpy as np
    from emcore.plugin_api import Family, FamilyRecord, PosteriorRuleRecord, hookimpl


    class ToyFamily(Family):
        '''Unit-variance 1-d normal components with free means (pure Python).'''

        def log_density(self, X, params):
            return -0.5 * (X - params["means"].T) ** 2 - 0.5 * np.log(2 * np.pi)

        def empty_stats(self):
            return (np.zeros(self.n_components), np.zeros((self.n_components, 1)))

        def chunk_stats(self, X, weights):
            return (weights.sum(axis=0), weights.T @ X)

        def merge_stats(self, a, b):
            return (a[0] + b[0], a[1] + b[1])

        def m_step(self, stats, previous):
            w, s = stats
            return {"means": s / np.maximum(w, 1e-300)[:, None]}

        def expected_log_likelihood(self, stats, params):
            raise NotImplementedError

        def n_parameters(self):
            return self.n_components


    @hookimpl
    def emcore_register_families():
        return [FamilyRecord(name="toy", factory=ToyFamily,
                             description="a tiny pure-Python test family")]
"""


def install_broken_set(inst: Installer) -> dict:
    """Install one good third-party distribution and several broken ones.

    Returns {(entry point, distribution): substrings its broken reason must contain}.
    The duplicate-name case is tested separately (see the duplicate tests below).
    """
    # A good pure-Python family next to the broken ones.
    good = inst.module("toy", GOOD_FAMILY_SOURCE)
    inst.dist("emcore-toy-family", [("toy", good)])

    # Import errors: a missing dependency, and an entry point naming a missing attribute.
    needs_dep = inst.module("needs_dep", """
        import emcore_test_dependency_that_does_not_exist  # noqa: F401
    """)
    no_attr = inst.module("no_attr", """
        x = 1
    """)
    inst.dist("emcore-broken-import", [("needs-dep", needs_dep),
                                       ("missing-attr", f"{no_attr}:not_there")])

    # A misspelled hook name marked with emcore's hookimpl (plus one valid hook: the
    # whole plugin is skipped, so its valid rule must not be registered either).
    typo = inst.module("typo", """
        from emcore.plugin_api import FamilyRecord, PosteriorRuleRecord, hookimpl
        from emcore.plugins.posterior import SoftPosterior

        @hookimpl
        def emcore_register_familes():
            return [FamilyRecord(name="typo-family", factory=dict)]

        @hookimpl
        def emcore_register_posterior_rules():
            return [PosteriorRuleRecord(name="typo-rule", factory=SoftPosterior)]
    """)
    inst.dist("emcore-typo", [("typo", typo)])

    # A hookimpl with an argument the spec does not have. pluggy validates hooks in
    # alphabetical order, so the valid families hook is added before the invalid one
    # fails: the registry must remove it again.
    badarg = inst.module("badarg", """
        from emcore.plugin_api import FamilyRecord, hookimpl

        @hookimpl
        def emcore_register_families():
            return [FamilyRecord(name="badarg-family", factory=dict)]

        @hookimpl
        def emcore_register_posterior_rules(n_components):
            return []
    """)
    inst.dist("emcore-badarg", [("badarg", badarg)])

    # A hook that raises.
    raises = inst.module("raises", """
        from emcore.plugin_api import hookimpl

        @hookimpl
        def emcore_register_families():
            raise RuntimeError("registration exploded")
    """)
    inst.dist("emcore-raises", [("raises", raises)])

    # Hooks that return things that are not the right records.
    wrong = inst.module("wrong", """
        from emcore.plugin_api import hookimpl

        @hookimpl
        def emcore_register_families():
            return [{"name": "dict-family"}]
    """)
    wrong_rule = inst.module("wrong_rule", """
        from emcore.plugin_api import FamilyRecord, hookimpl

        @hookimpl
        def emcore_register_posterior_rules():
            return [FamilyRecord(name="family-posing-as-rule", factory=dict)]
    """)
    inst.dist("emcore-wrong-records", [("wrong", wrong), ("wrong-rule", wrong_rule)])

    return {
        ("needs-dep", "emcore-broken-import"): [
            "import failed", "ModuleNotFoundError",
            "emcore_test_dependency_that_does_not_exist"],
        ("missing-attr", "emcore-broken-import"): [
            "import failed", "AttributeError", "not_there"],
        ("typo", "emcore-typo"): ["invalid hook", "emcore_register_familes"],
        ("badarg", "emcore-badarg"): [
            "invalid hook", "emcore_register_posterior_rules", "n_components"],
        ("raises", "emcore-raises"): [
            "emcore_register_families() raised", "RuntimeError", "registration exploded"],
        ("wrong", "emcore-wrong-records"): [
            "emcore_register_families() returned", "dict-family", "not a FamilyRecord"],
        ("wrong-rule", "emcore-wrong-records"): [
            "emcore_register_posterior_rules() returned", "family-posing-as-rule",
            "not a PosteriorRuleRecord"],
    }


def _broken_by_key(reg) -> dict:
    out: dict = {}
    for b in reg.broken:
        out.setdefault((b.name, b.distribution), []).append(b.reason)
    return out


def _subprocess_env(extra_path: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(extra_path), env.get("PYTHONPATH", "")) if p)
    return env


# --- first-party plugins through the entry-point group --------------------------------

def test_first_party_plugins_are_entry_points_of_the_emcore_group():
    eps = {(ep.name, ep.value) for ep in md.entry_points(group=ENTRY_POINT_GROUP)
           if ep.dist is not None and ep.dist.name == DISTRIBUTION}
    assert ENTRY_POINT_GROUP == "emcore"
    assert ("gaussian", GAUSSIAN_MODULE) in eps
    assert ("soft", POSTERIOR_MODULE) in eps


def test_fresh_registry_has_first_party_family_and_rule():
    from emcore.plugins.gaussian import GaussianFamily
    from emcore.plugins.posterior import SoftPosterior

    reg = load_registry()
    gaussian = reg.families["gaussian"]
    assert (gaussian.plugin, gaussian.distribution) == ("gaussian", DISTRIBUTION)
    assert isinstance(gaussian.record, FamilyRecord)
    assert reg.family("gaussian").factory is GaussianFamily
    assert {"compiled_kernel", "sampling", "covariance_type:full"} <= \
        reg.family("gaussian").capabilities
    soft = reg.posterior_rules["soft"]
    assert (soft.plugin, soft.distribution) == ("soft", DISTRIBUTION)
    assert isinstance(soft.record, PosteriorRuleRecord)
    assert reg.posterior_rule("soft").factory is SoftPosterior
    # The first-party modules are registered with the plugin manager under their
    # distribution-qualified names.
    assert reg.plugin_manager.get_plugin(f"{DISTRIBUTION}:gaussian") is \
        importlib.import_module(GAUSSIAN_MODULE)
    assert reg.plugin_manager.get_plugin(f"{DISTRIBUTION}:soft") is \
        importlib.import_module(POSTERIOR_MODULE)
    assert [b for b in reg.broken if b.distribution == DISTRIBUTION] == []


def test_first_party_plugins_load_only_through_their_entry_points():
    # An explicit, empty set of entry points gives an empty registry: nothing is
    # registered behind the entry-point group's back.
    reg = load_registry(entry_points=[])
    assert reg.families == {} and reg.posterior_rules == {} and reg.broken == []
    first_party = [ep for ep in md.entry_points(group=ENTRY_POINT_GROUP)
                   if ep.dist is not None and ep.dist.name == DISTRIBUTION]
    reg = load_registry(entry_points=first_party)
    assert set(reg.families) == {"gaussian", "kmeans", "linear_regression", "product",
                                 "exponential", "gamma", "student_t",
                                 "categorical", "bernoulli", "poisson"}
    assert set(reg.posterior_rules) == {"soft", "hard", "tempered", "constrained", "sampled",
                                        "stochastic"}


def test_get_registry_is_loaded_once_and_cached():
    assert get_registry() is get_registry()
    assert "gaussian" in get_registry().families
    assert "soft" in get_registry().posterior_rules


def test_two_entry_points_naming_one_module_register_it_once(installer):
    mod = installer.module("twice", GOOD_FAMILY_SOURCE)
    installer.dist("emcore-twice", [("one", mod), ("two", mod)])
    reg = load_registry()
    assert reg.families["toy"].distribution == "emcore-twice"
    assert reg.broken == []


# --- lookups --------------------------------------------------------------------------

def test_unknown_family_lists_the_registered_names():
    reg = load_registry()
    with pytest.raises(ValueError, match=r"no family named 'gausian'.*'gaussian'"):
        reg.family("gausian")
    with pytest.raises(ValueError, match=r"no posterior rule named 'annealed'.*'soft'"):
        reg.posterior_rule("annealed")
    # Unhashable names are a lookup failure too, not a TypeError from the dict.
    with pytest.raises(ValueError, match="no family named"):
        reg.family(["gaussian"])
    with pytest.raises(ValueError, match="registered: none"):
        load_registry(entry_points=[]).family("gaussian")


# --- record validation ----------------------------------------------------------------

RECORD_TYPES = [FamilyRecord, PosteriorRuleRecord]


@pytest.mark.parametrize("record_type", RECORD_TYPES)
@pytest.mark.parametrize("name", ["", "Gaussian", "two words", "a/b", "gauß", " soft",
                                  "soft\n", 3, None, b"soft"])
def test_record_rejects_bad_names(record_type, name):
    with pytest.raises(TypeError, match="name must be"):
        record_type(name=name, factory=dict)


@pytest.mark.parametrize("record_type", RECORD_TYPES)
@pytest.mark.parametrize("factory", [None, 3, "emcore.plugins.gaussian.GaussianFamily"])
def test_record_rejects_non_callable_factory(record_type, factory):
    with pytest.raises(TypeError, match="factory must be callable"):
        record_type(name="ok", factory=factory)


@pytest.mark.parametrize("record_type", RECORD_TYPES)
@pytest.mark.parametrize("capabilities", [{"sampling"}, ["sampling"], ("sampling",),
                                          "sampling", None, frozenset({1}),
                                          frozenset({"sampling", None})])
def test_record_rejects_capabilities_not_a_frozenset_of_str(record_type, capabilities):
    with pytest.raises(TypeError, match="capabilities must be a frozenset"):
        record_type(name="ok", factory=dict, capabilities=capabilities)


@pytest.mark.parametrize("record_type", RECORD_TYPES)
def test_record_accepts_valid_fields(record_type):
    rec = record_type(name="my-fam_1.2", factory=dict,
                      capabilities=frozenset({"sampling", "support:binary"}),
                      description="one line")
    assert rec.name == "my-fam_1.2" and rec.factory is dict
    assert record_type(name="x", factory=dict).capabilities == frozenset()
    with pytest.raises(AttributeError):      # frozen dataclass
        rec.name = "other"


@pytest.mark.parametrize("record_type", RECORD_TYPES)
@pytest.mark.parametrize("capability", ["anything:custom", "suport:real", "support:reals",
                                        "Sampling", "support:"])
def test_record_rejects_a_capability_outside_the_vocabulary(record_type, capability):
    # a typo would silently turn the checks it enables off
    with pytest.raises(ValueError, match=rf"'ok' declares unknown capability "
                                         rf"'{re.escape(capability)}'.*support:real"):
        record_type(name="ok", factory=dict, capabilities=frozenset({"sampling", capability}))


def test_record_rejects_two_supports():
    with pytest.raises(ValueError, match="declares 2 supports"):
        FamilyRecord(name="ok", factory=dict,
                     capabilities=frozenset({"support:real", "support:binary"}))


def test_every_capability_is_documented_and_every_support_is_a_capability():
    from emcore.plugin_api import CAPABILITIES, SUPPORTS
    assert set(SUPPORTS) <= set(CAPABILITIES)
    assert all(isinstance(text, str) and text for text in CAPABILITIES.values())
    assert all(name.startswith("support:") for name in SUPPORTS)


def test_a_plugin_with_an_unknown_capability_is_reported_by_name(installer):
    typo = installer.module("captypo", """
        from emcore.plugin_api import FamilyRecord, hookimpl

        @hookimpl
        def emcore_register_families():
            return [FamilyRecord(name="typo-family", factory=dict,
                                 capabilities=frozenset({"sampling", "support:counts"}))]
    """)
    installer.dist("emcore-captypo", [("captypo", typo)])
    reg = load_registry()
    assert "typo-family" not in reg.families and "gaussian" in reg.families
    [broken] = [b for b in reg.broken if b.distribution == "emcore-captypo"]
    assert broken.name == "captypo"
    assert "unknown capability 'support:counts'" in broken.reason


# --- first-party plugins use only the public plugin API -----------------------------

#: what a first-party plugin may import from emcore (besides its own modules in
#: emcore.plugins): the rule the example third-party plugin follows too.
#: emcore.moments is the public .pxd of the moment merge and slot layouts
#: (emcore/include/emcore/moments.h), installed for third parties' compiled families.
PUBLIC_MODULES = {"emcore", "emcore.plugin_api", "emcore.kernel", "emcore.blas",
                  "emcore.moments"}
_PYX_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import\b|c?import\s+([\w.]+))", re.M)


def _plugin_sources() -> list:
    import emcore.plugins
    root = Path(emcore.plugins.__path__[0])
    return sorted(p for p in root.iterdir() if p.suffix in (".py", ".pyx"))


def _emcore_imports(path: Path) -> set:
    """Modules of the emcore package a plugin source imports (.py: every import
    statement, nested ones too; .pyx: every import/cimport line)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".pyx":
        names = {a or b for a, b in _PYX_IMPORT.findall(text)}
    else:
        names = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.ImportFrom):
                names.add("emcore.plugins")             # a relative import: its own
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
    return {n for n in names if n == "emcore" or n.startswith("emcore.")}


def test_the_plugin_sources_are_all_seen():
    names = {p.name for p in _plugin_sources()}
    assert {"gaussian.py", "kmeans.py", "posterior.py", "constrained.py",
            "_gaussian_kernel.pyx", "_kmeans_kernel.pyx", "_posterior_kernels.pyx"} <= names


@pytest.mark.parametrize("path", _plugin_sources(), ids=lambda p: p.name)
def test_first_party_plugins_import_only_the_public_api(path):
    private = {m for m in _emcore_imports(path)
               if m not in PUBLIC_MODULES and not m.startswith("emcore.plugins")}
    assert not private, f"{path.name} imports emcore internals {sorted(private)}"


def test_the_import_rule_catches_an_internal_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from emcore.registry import get_registry\n")
    assert _emcore_imports(bad) == {"emcore.registry"}
    pyx = tmp_path / "bad.pyx"
    pyx.write_text("from emcore._core._passes cimport something\ncimport emcore.kernel\n")
    assert _emcore_imports(pyx) == {"emcore._core._passes", "emcore.kernel"}


# --- broken plugins are reported and skipped, the others load -------------------------

def test_broken_plugins_are_reported_by_name_and_skipped(installer):
    expected = install_broken_set(installer)
    reg = load_registry()

    # First-party plugins are untouched.
    assert reg.families["gaussian"].distribution == DISTRIBUTION
    assert reg.posterior_rules["soft"].distribution == DISTRIBUTION

    # The good third-party family loads, with its entry point and distribution.
    toy = reg.families["toy"]
    assert (toy.plugin, toy.distribution) == ("toy", "emcore-toy-family")
    assert toy.record.factory.__module__ == installer.m("toy")
    fam = reg.family("toy").factory(2, 1)
    assert fam.n_components == 2 and fam.n_parameters() == 2

    # Every broken plugin is reported once, by entry point and distribution, with why.
    broken = _broken_by_key(reg)
    assert set(broken) == set(expected), reg.broken
    for key, needles in expected.items():
        assert len(broken[key]) == 1, (key, broken[key])
        for needle in needles:
            assert needle in broken[key][0], (key, needle, broken[key][0])
    assert all(isinstance(b, BrokenPlugin) for b in reg.broken)

    # ... and skipped: nothing they declared is registered. (Other installed
    # third-party plugins, such as the example in examples/, may be there too.)
    first_party = load_registry(entry_points=[
        ep for ep in md.entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist is not None and ep.dist.name == DISTRIBUTION])
    assert set(first_party.families) | {"toy"} <= set(reg.families)
    assert set(first_party.posterior_rules) <= set(reg.posterior_rules)
    assert "dict-family" not in reg.families
    pm = reg.plugin_manager
    for name in ("emcore-typo:typo", "emcore-badarg:badarg"):
        assert pm.get_plugin(name) is None
    for caller in (pm.hook.emcore_register_families, pm.hook.emcore_register_posterior_rules):
        plugins = {impl.plugin_name for impl in caller.get_hookimpls()}
        assert not plugins & {"emcore-typo:typo", "emcore-badarg:badarg"}

    # A lookup failure mentions the broken plugins.
    with pytest.raises(ValueError, match=r"broken plugins: .*needs-dep"):
        reg.family("badarg-family")


def test_hook_returning_a_single_record_instead_of_a_sequence_is_reported(installer):
    single = installer.module("single", """
        from emcore.plugin_api import FamilyRecord, hookimpl

        @hookimpl
        def emcore_register_families():
            return FamilyRecord(name="single", factory=dict)
    """)
    installer.dist("emcore-single", [("single", single)])
    reg = load_registry()
    assert "single" not in reg.families
    assert [b.name for b in reg.broken] == ["single"]
    assert reg.broken[0].distribution == "emcore-single"
    assert "emcore_register_families()" in reg.broken[0].reason
    assert "gaussian" in reg.families


def test_registration_hooks_run_once_at_load_and_never_during_fit(installer, monkeypatch):
    counting = installer.module("counting", """
        from emcore.plugin_api import FamilyRecord, PosteriorRuleRecord, hookimpl
        from emcore.plugins.posterior import SoftPosterior

        CALLS = {"families": 0, "posterior_rules": 0}

        class Unused:
            pass

        @hookimpl
        def emcore_register_families():
            CALLS["families"] += 1
            return [FamilyRecord(name="counting", factory=Unused)]

        @hookimpl
        def emcore_register_posterior_rules():
            CALLS["posterior_rules"] += 1
            return [PosteriorRuleRecord(name="counting-rule", factory=SoftPosterior)]
    """)
    installer.dist("emcore-counting", [("counting", counting)])
    reg = load_registry()
    calls = sys.modules[counting].CALLS
    assert calls == {"families": 1, "posterior_rules": 1}
    assert reg.families["counting"].distribution == "emcore-counting"

    # From here on any hook call fails: through the plugin manager's callers ...
    def no_hook_calls(*args, **kwargs):
        raise AssertionError("a registration hook was called after the registry loaded")

    pm = reg.plugin_manager
    for caller in (pm.hook.emcore_register_families, pm.hook.emcore_register_posterior_rules):
        monkeypatch.setattr(caller, "_hookexec", no_hook_calls)
    # ... or by reloading the plugins (the counting plugin would count again).
    monkeypatch.setattr(registry_mod, "load_registry", no_hook_calls)

    # The estimator resolves from this registry; count the lookups.
    lookups = {"family": 0, "posterior_rule": 0}
    real_family, real_rule = reg.family, reg.posterior_rule

    def family(name):
        lookups["family"] += 1
        return real_family(name)

    def posterior_rule(name):
        lookups["posterior_rule"] += 1
        return real_rule(name)

    monkeypatch.setattr(reg, "family", family)
    monkeypatch.setattr(reg, "posterior_rule", posterior_rule)
    monkeypatch.setattr("emcore.gaussian_mixture.get_registry", lambda: reg)
    monkeypatch.setattr("emcore._mixture.get_registry", lambda: reg)

    X = load_old_faithful()
    gm = emcore.GaussianMixture(n_components=2, n_init=2, random_state=0).fit(X)
    assert gm.n_iter_ >= 2
    # Resolved once per fit (not per init, iteration or chunk) ...
    assert lookups == {"family": 1, "posterior_rule": 1}
    # ... and no hook ran, during the fit or after it.
    gm.predict(X)
    gm.score_samples(X)
    assert calls == {"families": 1, "posterior_rules": 1}


# --- the installed broken distributions, end to end (subprocesses) --------------------

FIT_SCRIPT = """
import json
import emcore
from emcore.datasets import load_old_faithful
from emcore.registry import get_registry


X = load_old_faithful()
gm = emcore.GaussianMixture(n_components=2, random_state=0).fit(X)
reg = get_registry()
print(json.dumps({
    "loglik": float(gm.lower_bound_ * X.shape[0]),
    "stop_reason": gm.stop_reason_,
    "families": {k: [v.plugin, v.distribution] for k, v in reg.families.items()},
    "rules": {k: [v.plugin, v.distribution] for k, v in reg.posterior_rules.items()},
    "broken": [[b.name, b.distribution, b.reason] for b in reg.broken],
}))
"""


def test_installed_broken_plugins_do_not_stop_a_gaussian_fit_or_emcore_plugins(installer):
    expected = install_broken_set(installer)
    env = _subprocess_env(installer.root)
    cwd = installer.root

    # A fit in a fresh interpreter that sees the broken distributions, through the
    # real cached registry.
    proc = subprocess.run([sys.executable, "-c", FIT_SCRIPT], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["stop_reason"] == "tol"
    # The Old Faithful maximum (checked against scikit-learn in test_cli.py).
    assert out["loglik"] == pytest.approx(-1130.264, abs=1e-2)
    assert out["families"]["gaussian"] == ["gaussian", DISTRIBUTION]
    assert out["families"]["toy"] == ["toy", "emcore-toy-family"]
    assert out["rules"] == {**{name: ["soft", DISTRIBUTION] for name in ("soft", "hard", "tempered",
                                                                        "sampled", "stochastic")},
                            "constrained": ["constrained", DISTRIBUTION]}
    assert {(n, d) for n, d, _ in out["broken"]} == set(expected)

    # `emcore plugins` lists who provides what, and the broken ones with why.
    proc = subprocess.run(emcore_command() + ["plugins"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    families, rest = text.split("Posterior rules:")
    rules, broken = rest.split("Broken plugins:")
    assert re.search(r"^\s+gaussian\s+from emcore-learn \(entry point 'gaussian'\)", families, re.M)
    assert re.search(r"^\s+toy\s+from emcore-toy-family \(entry point 'toy'\)", families, re.M)
    assert "a tiny pure-Python test family" in families
    assert re.search(r"^\s+soft\s+from emcore-learn \(entry point 'soft'\)", rules, re.M)
    assert "(none)" not in broken
    for (ep, dist), needles in expected.items():
        start = broken.index(f"  {ep} from {dist}: ")
        line = broken[start:]
        for needle in needles:
            assert needle in line, (ep, needle, line)
    for hidden in ("typo-family", "typo-rule", "badarg-family"):
        assert not re.search(rf"^\s+{re.escape(hidden)}\s+from ", families + rules, re.M)


# --- known bugs (see the reasons) -----------------------------------------------------

def _install_evil_duplicates(inst: Installer) -> None:
    # Distribution and entry-point names chosen so that any order other than
    # "first-party first" would let the third party win.
    evil = inst.module("evil", """
        from emcore.plugin_api import FamilyRecord, PosteriorRuleRecord, hookimpl

        class NotAGaussian:
            def __init__(self, *args, **kwargs):
                raise RuntimeError("the third-party 'gaussian' was used")

        @hookimpl
        def emcore_register_families():
            return [FamilyRecord(name="gaussian", factory=NotAGaussian)]

        @hookimpl
        def emcore_register_posterior_rules():
            return [PosteriorRuleRecord(name="soft", factory=NotAGaussian)]
    """)
    inst.dist("aaa-evil-gaussian", [("gaussian", evil)])


def test_duplicate_names_do_not_replace_first_party_plugins(installer):
    from emcore.plugins.gaussian import GaussianFamily
    from emcore.plugins.posterior import SoftPosterior

    _install_evil_duplicates(installer)
    reg = load_registry()
    assert reg.families["gaussian"].distribution == DISTRIBUTION
    assert reg.family("gaussian").factory is GaussianFamily
    assert reg.posterior_rules["soft"].distribution == DISTRIBUTION
    assert reg.posterior_rule("soft").factory is SoftPosterior
    reasons = _broken_by_key(reg)
    assert set(reasons) == {("gaussian", "aaa-evil-gaussian")}
    family_reason, rule_reason = sorted(reasons[("gaussian", "aaa-evil-gaussian")])
    assert "duplicate family name 'gaussian'" in family_reason
    assert "already provided by emcore" in family_reason
    assert "duplicate posterior rule name 'soft'" in rule_reason
    assert "already provided by emcore" in rule_reason


def test_duplicate_name_between_third_parties_goes_to_the_first_loaded(installer):
    first = installer.module("first", """
        from emcore.plugin_api import FamilyRecord, hookimpl
        class First: pass
        @hookimpl
        def emcore_register_families():
            return [FamilyRecord(name="shared", factory=First)]
    """)
    second = installer.module("second", """
        from emcore.plugin_api import FamilyRecord, hookimpl
        class Second: pass
        @hookimpl
        def emcore_register_families():
            return [FamilyRecord(name="shared", factory=Second)]
    """)
    # Documented load order: first party, then by distribution name.
    installer.dist("emcore-aaa", [("shared", first)])
    installer.dist("emcore-zzz", [("shared", second)])
    reg = load_registry()
    assert reg.families["shared"].distribution == "emcore-aaa"
    assert [(b.name, b.distribution) for b in reg.broken] == [("shared", "emcore-zzz")]
    assert "already provided by emcore-aaa" in reg.broken[0].reason


def test_installed_duplicate_gaussian_does_not_stop_a_gaussian_fit(installer):
    _install_evil_duplicates(installer)
    proc = subprocess.run([sys.executable, "-c", FIT_SCRIPT],
                          env=_subprocess_env(installer.root), cwd=installer.root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["families"]["gaussian"] == ["gaussian", DISTRIBUTION]
    assert out["rules"]["soft"] == ["soft", DISTRIBUTION]
    assert [[n, d] for n, d, _ in out["broken"]] == [["gaussian", "aaa-evil-gaussian"]] * 2


def test_repeated_entry_point_name_does_not_unregister_the_first(installer):
    a = installer.module("rep_a", """
        from emcore.plugin_api import FamilyRecord, hookimpl
        @hookimpl
        def emcore_register_families():
            return [FamilyRecord(name="rep-a", factory=dict)]
    """)
    b = installer.module("rep_b", """
        from emcore.plugin_api import FamilyRecord, hookimpl
        @hookimpl
        def emcore_register_families():
            return [FamilyRecord(name="rep-b", factory=dict)]
    """)
    installer.dist("emcore-repeated", [("rep", a), ("rep", b)])
    reg = load_registry()
    assert "rep-a" in reg.families          # the first one stays
    assert [(x.name, x.distribution) for x in reg.broken] == [("rep", "emcore-repeated")]


def test_distribution_without_a_name_does_not_break_the_registry(installer):
    mod = installer.module("nameless", GOOD_FAMILY_SOURCE)
    installer.dist("emcore-nameless", [("nameless", mod)],
                   metadata="Metadata-Version: 2.1\nVersion: 0.1\n")
    reg = load_registry()
    assert reg.families["gaussian"].distribution == DISTRIBUTION
    loaded = {e.plugin for e in reg.families.values()}
    assert "nameless" in loaded | {b.name for b in reg.broken}


def test_hook_raising_systemexit_is_reported(installer):
    mod = installer.module("exits", """
        import sys
        from emcore.plugin_api import hookimpl

        @hookimpl
        def emcore_register_families():
            sys.exit(3)
    """)
    installer.dist("emcore-exits", [("exits", mod)])
    try:
        reg = load_registry()
    except SystemExit:
        pytest.fail("SystemExit from a plugin hook escaped load_registry")
    assert "gaussian" in reg.families
    assert [(b.name, b.distribution) for b in reg.broken] == [("exits", "emcore-exits")]
    assert "SystemExit" in reg.broken[0].reason


# --- what estimators need from first-party families: public protocols ------------------

def test_first_party_families_satisfy_the_protocols_the_estimators_rely_on():
    from emcore.plugin_api import CentroidFamilyProtocol, GaussianFamilyProtocol
    gaussian = get_registry().family("gaussian").factory(2, 3)
    kmeans = get_registry().family("kmeans").factory(2, 3)
    assert isinstance(gaussian, GaussianFamilyProtocol)
    assert isinstance(kmeans, CentroidFamilyProtocol)
    assert not isinstance(kmeans, GaussianFamilyProtocol)


def test_kmeans_inertia_comes_from_the_public_within_scatter():
    X = load_old_faithful()
    model = emcore.KMeans(3, random_state=0).fit(X)
    centres = model.cluster_centers_
    stats = model._pass(X, centres, with_stats=True).stats
    family = get_registry().family("kmeans").factory(*centres.shape)
    within = family.within_scatter(stats, {"means": centres})
    # the statistics of the pass at the centres are taken about the centres: the
    # inertia is their accumulated scatter, bit for bit
    assert model.inertia_ == float(np.sum(within)) == -model.score(X)
