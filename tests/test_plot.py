"""emcore.plot: what each plot draws (Agg backend), and the error without matplotlib."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from emcore import GaussianMixture, select_model
from emcore.datasets import load_old_faithful

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402

from emcore import plot  # noqa: E402


@pytest.fixture(scope="module")
def faithful():
    return load_old_faithful()


@pytest.fixture(scope="module")
def fitted(faithful):
    return GaussianMixture(n_components=3, covariance_type="full", tol=1e-6,
                           random_state=0).fit(faithful)


def _ax():
    return Figure().subplots()


def test_classification_draws_one_ellipse_per_component(fitted, faithful):
    ax = plot.classification(fitted, faithful, ax=_ax())
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 3
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x0", "x1")
    # each ellipse is centred at its mean, its axes the covariance's eigenvalues
    for k, e in enumerate(ellipses):
        np.testing.assert_allclose(e.center, fitted.means_[k], rtol=1e-12)
        values = np.linalg.eigvalsh(fitted.covariances_[k])
        radius = np.sqrt(-2 * np.log(0.05))  # 95% of a bivariate Gaussian's mass
        np.testing.assert_allclose(sorted([e.width, e.height]),
                                   2 * radius * np.sqrt(values), rtol=1e-10)
        # and oriented along its eigenvectors: the ends of both axes lie on it
        values, vectors = np.linalg.eigh(fitted.covariances_[k])
        for lam, vec in zip(values, vectors.T):
            end = fitted.means_[k] + radius * np.sqrt(lam) * vec
            unit = e.get_patch_transform().inverted().transform(end)
            assert np.linalg.norm(unit) == pytest.approx(1.0, rel=1e-8)
    # the points, coloured by predict
    assert ax.collections[0].get_offsets().shape == (272, 2)


def test_classification_feature_pair_and_names(faithful):
    X3 = np.column_stack([faithful, faithful[:, 0] * 2 + 1])
    gm = GaussianMixture(n_components=2, covariance_type="diag", random_state=0).fit(X3)
    ax = plot.classification(gm, X3, features=(2, 1), ax=_ax())
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x2", "x1")
    e = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(e) == 2
    np.testing.assert_allclose(e[0].center, gm.means_[0][[2, 1]])
    with pytest.raises(ValueError, match="'features' parameter of classification"):
        plot.classification(gm, X3, features=(0, 0), ax=_ax())
    with pytest.raises(ValueError, match="'features' parameter of classification"):
        plot.classification(gm, X3, features=(0, 3), ax=_ax())


def test_uncertainty_sizes(fitted, faithful):
    ax = plot.uncertainty(fitted, faithful, ax=_ax())
    sizes = ax.collections[0].get_sizes()
    u = 1 - fitted.predict_proba(faithful).max(axis=1)
    assert sizes.shape == (272,)
    # larger uncertainty, larger point
    assert np.argmax(sizes) == np.argmax(u) and np.argmin(sizes) == np.argmin(u)


def test_criterion_curves(faithful):
    sel = select_model(faithful, n_components=range(1, 4),
                       covariance_types=("full", "spherical"), n_init=1, random_state=0)
    ax = plot.criterion_curves(sel, ax=_ax())
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"full", "spherical", "chosen"}
    full = [r.bic for r in sel.table if r.covariance_type == "full"]
    np.testing.assert_array_equal(lines["full"].get_ydata(), full)
    assert lines["chosen"].get_ydata()[0] == sel.best.bic
    assert ax.get_ylabel() == "BIC (lower is better)"
    ax = plot.criterion_curves(sel, criterion="icl", ax=_ax())
    assert ax.get_ylabel() == "ICL (lower is better)"
    with pytest.raises(ValueError, match="'criterion' parameter of criterion_curves"):
        plot.criterion_curves(sel, criterion="nope", ax=_ax())


def test_trace(fitted):
    ax = plot.trace(fitted, ax=_ax())
    loglik, elbo = ax.get_lines()
    h = fitted.history_
    assert len(loglik.get_ydata()) == len(h) + 1 and len(elbo.get_ydata()) == len(h)
    assert loglik.get_ydata()[-1] == h[-1].value_next
    with pytest.raises(ValueError, match="'model' parameter of trace"):
        plot.trace(GaussianMixture(), ax=_ax())


def test_without_matplotlib(fitted, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match="emcore.plot needs matplotlib"):
        plot.trace(fitted)


def test_density_is_the_models(fitted, faithful):
    U, W, Z = plot._log_density_mesh(fitted, faithful, 0, 1, 30)
    assert U.shape == W.shape == Z.shape == (30, 30)
    # 2-D: the marginal is the model itself
    expected = fitted.score_samples(np.column_stack([U.ravel(), W.ravel()]))
    np.testing.assert_allclose(Z.ravel(), expected, rtol=1e-10)
    ax = plot.density(fitted, faithful, ax=_ax(), grid=30)
    assert any(hasattr(c, "levels") for c in ax.collections)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x0", "x1")


def test_density_marginal_in_higher_dimensions(faithful):
    rng = np.random.default_rng(0)
    X3 = np.column_stack([faithful, rng.normal(size=272)])
    gm = GaussianMixture(n_components=2, random_state=0).fit(X3)
    U, W, Z = plot._log_density_mesh(gm, X3, 2, 0, 20)
    # the marginal of features (2, 0): the mixture of the blocks of the parameters
    pair = [2, 0]
    marginal = GaussianMixture.from_parameters(
        gm.weights_, gm.means_[:, pair], gm.covariances_[:, pair][:, :, pair])
    expected = marginal.score_samples(np.column_stack([U.ravel(), W.ravel()]))
    np.testing.assert_allclose(Z.ravel(), expected, rtol=1e-10)
    ax = plot.density(gm, X3, features=(2, 0), ax=_ax(), grid=20)
    assert ax.get_xlabel() == "x2" and ax.get_ylabel() == "x0"
