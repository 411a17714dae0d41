"""Saving and loading fitted estimators without pickle.

``est.save(path)`` / :func:`load` write and read a zip archive (the format
``emcore-model``, version :data:`FORMAT_VERSION`) holding

- ``manifest.json``: the format and its version, emcore's version, the estimator's
  class name, its constructor parameters, its fitted attributes (numbers, strings,
  tuples, the ``history_`` records), the families and posterior rules it uses with
  the plugin and distribution (and version) that provides each, and the SHA-256 of
  every array file;
- ``arrays/<n>.npy``: each array, written by ``numpy.save(allow_pickle=False)``.

Loading never executes code from the file: arrays are read with
``allow_pickle=False``, the class is looked up by name among emcore's own
estimators (anything else is refused), and only the few value types listed in
:func:`_decode` are built. A file of an unknown format or format version, an
estimator class emcore does not have, or a family/rule whose plugin is not
installed raises ValueError saying so; a different emcore or plugin version
warns (the parameters are still read bitwise). A corrupted or truncated file
raises ValueError (zip CRCs, the manifest's checksums, then the estimator's own
validation of its fitted attributes): never a half model. Writing goes to a
temporary file in the same folder, renamed over ``path`` when complete
(``os.replace``), so an interrupted save leaves any earlier file intact.

Pickle keeps working (``BaseEstimator.__getstate__`` stamps emcore's version, and
unpickling under another version warns), but a pickle runs code on load and
refers to emcore's internal modules; this format does neither.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as md
import io
import json
import os
import tempfile
import warnings
import zipfile
from typing import Any, Union

import numpy as np

from emcore._version import __version__

__all__ = ["FORMAT", "FORMAT_VERSION", "save", "load"]

FORMAT = "emcore-model"
FORMAT_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]

# attributes never written: rebuilt on load from the parameters and the registry
# (_fitted_rule, family_), or running state of partial_fit that a loaded model
# restarts from its fitted parameters (_online), or caches
_REBUILT = {"_fitted_rule", "family_", "_online", "_init"}
# private attributes that are part of the model
_PRIVATE_STATE = {"_covariances", "_precisions", "_precisions_cholesky",
                  "_fitted_covariance_type", "_support", "_sklearn_output_config"}


class _Writer:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def encode(self, value: Any, where: str) -> Any:
        """A JSON node for ``value``; arrays go to ``self.arrays``."""
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
            return int(value)
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, (float, np.floating)):
            # repr round-trips every double; JSON gets inf/nan as strings
            return {"$float": repr(float(value))}
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                if all(isinstance(x, str) for x in value.ravel()):
                    return {"$strings": [str(x) for x in value.ravel()],
                            "shape": list(value.shape)}
                raise TypeError(f"{where} is an object array of non-strings")
            if value.dtype.kind not in "biufc":
                raise TypeError(f"{where} is an array of dtype {value.dtype}")
            name = f"arrays/{len(self.arrays)}.npy"
            self.arrays[name] = value
            return {"$array": name}
        if isinstance(value, tuple):
            return {"$tuple": [self.encode(x, f"{where}[{i}]") for i, x in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(x, f"{where}[{i}]") for i, x in enumerate(value)]
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise TypeError(f"{where} is a dict with non-string keys")
            return {"$dict": {k: self.encode(x, f"{where}[{k!r}]") for k, x in value.items()}}
        name = {cls: key for key, cls in _object_classes().items()}.get(type(value))
        if name is not None:
            fields = {f.name: self.encode(getattr(value, f.name), f"{where}.{f.name}")
                      for f in dataclasses.fields(value)}
            return {"$object": name, "fields": fields}
        raise TypeError(f"{where} is a {type(value).__name__!s}, which the emcore-model "
                        "format cannot store")


def _object_classes() -> dict:
    """The dataclasses the format stores, by name (Iteration records, priors)."""
    from emcore.engine import Iteration
    from emcore.priors import GaussianPrior, ResolvedGaussianPrior
    return {"Iteration": Iteration, "GaussianPrior": GaussianPrior,
            "ResolvedGaussianPrior": ResolvedGaussianPrior}


def _decode(node: Any, arrays: dict) -> Any:
    """The value a JSON node stands for (only these types are ever built)."""
    if node is None or isinstance(node, (bool, int, str)):
        return node
    if isinstance(node, list):
        return [_decode(x, arrays) for x in node]
    if not isinstance(node, dict) or len(node) == 0:
        raise ValueError(f"unexpected manifest entry {node!r}")
    if "$float" in node:
        return float(node["$float"])
    if "$array" in node:
        return arrays[node["$array"]]
    if "$strings" in node:
        return np.asarray(node["$strings"], dtype=object).reshape(node["shape"])
    if "$tuple" in node:
        return tuple(_decode(x, arrays) for x in node["$tuple"])
    if "$dict" in node:
        return {k: _decode(x, arrays) for k, x in node["$dict"].items()}
    if "$object" in node:
        cls = _object_classes().get(node["$object"])
        if cls is None:
            raise ValueError(f"unknown object type {node['$object']!r}")
        return cls(**{k: _decode(x, arrays) for k, x in node["fields"].items()})
    raise ValueError(f"unexpected manifest entry {node!r}")


# emcore's public estimator classes by name, the only classes load builds: every
# public subclass of emcore._estimator.BaseEstimator defined in emcore registers
# itself here when its module is imported (importing emcore imports them all)
_ESTIMATORS: dict = {}


def _register_estimator(cls: type) -> None:
    """Called by ``BaseEstimator.__init_subclass__``."""
    if not cls.__name__.startswith("_") and cls.__module__.split(".")[0] == "emcore":
        _ESTIMATORS[cls.__name__] = cls


def _estimator_classes() -> dict:
    return dict(_ESTIMATORS)


def _distribution_version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "unknown"


def _plugins_used(estimator: Any) -> list:
    """[{kind, name, plugin, distribution, version}] of the registry entries the
    fitted model needs on load."""
    from emcore.registry import get_registry
    registry = get_registry()
    used = []
    family = getattr(estimator, "family", None)
    if hasattr(estimator, "family_") and isinstance(family, str):
        used.append(("family", family, registry.families))
    posterior = getattr(estimator, "posterior", None)
    if isinstance(posterior, str):
        used.append(("posterior_rule", posterior, registry.posterior_rules))
    out = []
    for kind, name, table in used:
        entry = table.get(name)
        if entry is None:
            continue
        out.append({"kind": kind, "name": name, "plugin": entry.plugin,
                    "distribution": entry.distribution,
                    "version": _distribution_version(entry.distribution)})
    return out


def _fitted_attributes(estimator: Any) -> dict:
    out = {}
    for key, value in vars(estimator).items():
        if key in _REBUILT:
            continue
        if key.endswith("_") and not key.startswith("__") or key in _PRIVATE_STATE:
            out[key] = value
    return out


def save(estimator: Any, path: PathLike) -> None:
    """Write ``estimator`` (fitted or not) to ``path`` in the emcore-model format.

    Raises TypeError naming the parameter or attribute that the format cannot
    store (e.g. a ``posterior`` given as a rule object or an ``emcore.Constraints``,
    a ``random_state`` given as a numpy Generator: give an int instead)."""
    owner = f"{type(estimator).__name__}.save"
    classes = _estimator_classes()
    name = type(estimator).__name__
    if classes.get(name) is not type(estimator):
        raise TypeError(f"{owner}: only emcore's own estimators can be saved. Got "
                        f"{type(estimator)!r} instead.")
    if hasattr(estimator, "family_"):
        rebuilt = estimator._family(estimator.n_features_in_, estimator.family_.n_components)
        if type(rebuilt) is not type(estimator.family_):
            raise TypeError(f"{owner}: the 'family' parameter no longer names the fitted "
                            "family (set_params after fit); refit or restore it first.")
    writer = _Writer()
    params = {}
    for key, value in estimator.get_params(deep=False).items():
        try:
            params[key] = writer.encode(value, f"the {key!r} parameter")
        except TypeError as exc:
            raise TypeError(f"{owner}: {exc}; the emcore-model format stores "
                            "parameters that are None, numbers, strings, arrays and "
                            "lists, tuples or dicts of these (and emcore.GaussianPrior)."
                            ) from None
    attributes = {}
    for key, value in _fitted_attributes(estimator).items():
        try:
            attributes[key] = writer.encode(value, f"the {key!r} attribute")
        except TypeError as exc:
            raise TypeError(f"{owner}: {exc}.") from None
    buffers = {}
    for array_name, arr in writer.arrays.items():
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        buffers[array_name] = buf.getvalue()
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "emcore_version": __version__, "estimator": name,
        "params": params, "attributes": attributes,
        "plugins": _plugins_used(estimator),
        "checksums": {k: hashlib.sha256(v).hexdigest() for k, v in buffers.items()},
    }
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".emcore-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("manifest.json", json.dumps(manifest, indent=1,
                                                        allow_nan=False))
                for array_name, data in buffers.items():
                    zf.writestr(array_name, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path: str) -> tuple:
    """(manifest, arrays) of a file, every check that needs no estimator done."""
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read("manifest.json").decode("utf-8"))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise _Refused(f"it is not an {FORMAT!r} file (format "
                               f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
            if manifest.get("format_version") != FORMAT_VERSION:
                raise _Refused(f"its format version {manifest.get('format_version')!r} is "
                               f"not one this emcore ({__version__}) reads "
                               f"({FORMAT_VERSION}); load it with the emcore version "
                               f"that wrote it ({manifest.get('emcore_version')!r})")
            arrays = {}
            for name, digest in manifest["checksums"].items():
                data = zf.read(name)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise ValueError(f"the checksum of {name} does not match")
                arrays[name] = np.load(io.BytesIO(data), allow_pickle=False)
    except _Refused:
        raise
    except FileNotFoundError:
        raise
    except Exception as exc:   # zip, zlib, JSON, npy or checksum: any damage at all
        raise ValueError(f"{path!r} is not a readable emcore model file (corrupted or "
                         f"truncated?): {exc}") from None
    return manifest, arrays


class _Refused(ValueError):
    """A well-formed file that this emcore will not read."""


def load(path: PathLike) -> Any:
    """The estimator saved at ``path`` by ``save`` (see the module docstring).

    Raises
    ------
    ValueError
        The file is corrupted or truncated, of another format or format version,
        of an estimator class emcore does not have, or needs a family or posterior
        rule whose plugin is not installed.

    Warns
    -----
    UserWarning
        The file was written by another emcore version, or with another version of
        a plugin's distribution.
    """
    path = os.fspath(path)
    manifest, arrays = _read(path)
    name = manifest.get("estimator")
    cls = _estimator_classes().get(name)
    if cls is None:
        raise ValueError(f"{path!r} holds an estimator of class {name!r}, which is not "
                         f"one of emcore's ({', '.join(sorted(_estimator_classes()))}).")
    from emcore.registry import get_registry
    registry = get_registry()
    for entry in manifest.get("plugins", []):
        table = (registry.families if entry["kind"] == "family"
                 else registry.posterior_rules)
        if entry["name"] not in table:
            raise ValueError(
                f"{path!r} needs the {entry['kind'].replace('_', ' ')} {entry['name']!r} "
                f"of the plugin {entry['plugin']!r} (distribution {entry['distribution']} "
                f"{entry['version']}), which is not installed: pip install "
                f"\"{entry['distribution']}\".")
        now = _distribution_version(table[entry["name"]].distribution)
        if now != entry["version"]:
            warnings.warn(f"{path!r} was saved with {entry['distribution']} "
                          f"{entry['version']}; this is {now}.", UserWarning, stacklevel=2)
    if manifest.get("emcore_version") != __version__:
        warnings.warn(f"{path!r} was saved by emcore {manifest.get('emcore_version')}; "
                      f"this is emcore {__version__}.", UserWarning, stacklevel=2)
    try:
        params = {k: _decode(v, arrays) for k, v in manifest["params"].items()}
        attributes = {k: _decode(v, arrays) for k, v in manifest["attributes"].items()}
        odd = [k for k in attributes if not ((k.endswith("_") and not k.startswith("__"))
                                              or k in _PRIVATE_STATE)]
        if odd:
            raise ValueError(f"attributes that are not fitted attributes: {odd}")
        estimator = cls(**params)
        estimator.__dict__.update(attributes)
        restore = getattr(estimator, "_restore_after_load", None)
        if restore is not None:
            restore()
        else:
            _restore(estimator)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path!r} is not a readable emcore model file (an inconsistent "
                         f"model: {exc}).") from None
    return estimator


def _restore(estimator: Any) -> None:
    """Rebuild what ``save`` does not write (the family and rule objects, from the
    parameters and the registry) and validate the fitted model as predictions will."""
    fitted = hasattr(estimator, "weights_") or hasattr(estimator, "cluster_centers_")
    if not fitted:
        return
    if hasattr(estimator, "params_"):            # MixtureModel: the registry's family
        k = np.shape(estimator.weights_)[0]
        estimator.family_ = estimator._family(estimator.n_features_in_, k)
    if hasattr(estimator, "_fit_rule") and hasattr(estimator, "weights_"):
        estimator._fitted_rule = estimator._fit_rule()
    if hasattr(estimator, "_fitted_model"):
        estimator._fitted_model(f"{type(estimator).__name__} (loaded)")
    else:                                        # KMeans: the centres are the model
        centres = estimator.cluster_centers_
        if not (isinstance(centres, np.ndarray) and centres.ndim == 2
                and centres.dtype == np.float64 and np.all(np.isfinite(centres))
                and centres.shape[1] == estimator.n_features_in_):
            raise ValueError("cluster_centers_ is not a finite float64 array of shape "
                             "(n_clusters, n_features_in_)")
