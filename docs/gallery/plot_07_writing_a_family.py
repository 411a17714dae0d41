"""
Writing a family
================

A component family is a subclass of ``emcore.plugin_api.Family``: log-densities,
additive sufficient statistics, an M-step and the expected complete-data
log-likelihood from the statistics. Here: independent geometric counts per
component, p(x | z = k) = Π_j (1 − p_kj)^x_j p_kj, written in a few lines and
checked by emcore's conformance suite (``emcore.testing.check_family``), which a
plugin runs in its own tests.
"""

from dataclasses import dataclass

import numpy as np

from emcore import DegenerateComponentError
from emcore.plugin_api import Family, FamilyRecord, hookimpl
from emcore.testing import check_family


@dataclass(frozen=True)
class GeometricStats:
    weight: np.ndarray     # (k,)   N_k = Σ_i w_ik
    total: np.ndarray      # (k, d) S_k = Σ_i w_ik x_i


class GeometricFamily(Family):
    """Independent geometric counts (failures before a success); params {"p": (k, d)}."""

    def log_density(self, X, params):
        p = params["p"]
        return X @ np.log1p(-p).T + np.log(p).sum(axis=1)

    def empty_stats(self):
        return GeometricStats(np.zeros(self.n_components),
                              np.zeros((self.n_components, self.n_features)))

    def chunk_stats(self, X, weights):
        return GeometricStats(weights.sum(axis=0), weights.T @ X)

    def merge_stats(self, a, b):
        return GeometricStats(a.weight + b.weight, a.total + b.total)

    def m_step(self, stats, previous):
        has = stats.weight > 0
        if not has.all() and previous is None:
            k = int(np.flatnonzero(~has)[0])
            raise DegenerateComponentError(f"component {k} has no data", component=k)
        n = np.where(has, stats.weight, 1.0)[:, None]
        p = n / (n + stats.total)          # the maximiser: 1 / (1 + mean count)
        return {"p": np.where(has[:, None], p, previous["p"] if previous else p)}

    def expected_log_likelihood(self, stats, params):
        p = params["p"]
        return float(np.sum(stats.total * np.log1p(-p))
                     + np.sum(stats.weight[:, None] * np.log(p)))

    def validate_params(self, params):
        p = np.asarray(params["p"])
        if p.shape != (self.n_components, self.n_features) or not np.all((p > 0) & (p <= 1)):
            raise ValueError(f"'p' must be ({self.n_components}, {self.n_features}) "
                             "probabilities in (0, 1]")

    def n_parameters(self):
        return self.n_components * self.n_features

    def sample(self, params, counts, rng):
        return np.concatenate([rng.geometric(params["p"][k], (int(c), self.n_features)) - 1.0
                               for k, c in enumerate(counts)])

    def random_params(self, rng, *, nearly_degenerate=False):
        return {"p": rng.uniform(0.3, 0.9, (self.n_components, self.n_features))}


# %%
# The conformance suite: normalisation (summed over the counts), sampling
# moments, merging statistics, weights as repetitions, the M-step as the
# maximiser, valid parameters, the ELBO bound and the EM chain.
report = check_family(GeometricFamily,
                      capabilities={"sampling", "support:nonnegative_integers"})
print(report)


# %%
# Registered through the ``emcore`` entry-point group of your package's
# pyproject.toml (``[project.entry-points.emcore] geometric = "my_package"``),
# the hook below makes ``emcore.MixtureModel(2, family="geometric")`` fit it;
# the example plugin ``examples/emcore-poisson`` is a complete distribution.
@hookimpl
def emcore_register_families():
    return [FamilyRecord(name="geometric", factory=GeometricFamily,
                         capabilities=frozenset({"sampling",
                                                 "support:nonnegative_integers"}),
                         description="independent geometric counts per component")]
