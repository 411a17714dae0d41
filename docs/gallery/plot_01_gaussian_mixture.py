"""
Gaussian mixtures and choosing the number of components
=======================================================

Fit a two-component Gaussian mixture to the Old Faithful eruptions, check the EM
chain every iteration satisfies, then let BIC choose the number of components and
the covariance type (mclust's ``mclustBIC`` table).
"""

import matplotlib.pyplot as plt

import emcore
from emcore import plot, select_model
from emcore.datasets import load_old_faithful

X = load_old_faithful()                      # (272, 2): eruption length, waiting time
gm = emcore.GaussianMixture(n_components=2, random_state=0).fit(X)
print(gm.weights_.round(3))
print(gm.means_.round(2))
print(gm.stop_reason_, "after", gm.n_iter_, "iterations")

# %%
# Every iteration t satisfies
# loglik(θ_t) = ELBO(q_t, θ_t) ≤ ELBO(q_t, θ_{t+1}) ≤ loglik(θ_{t+1}),
# each link checked against a derived rounding tolerance (docs: the ELBO chain).
for it in gm.history_[:3]:
    print(f"{it.value:.6f} <= {it.elbo:.6f} <= {it.value_next:.6f}  holds: {it.chain_holds()}")
print(all(it.chain_holds() for it in gm.history_))

# %%
# Model selection: every (n_components, covariance_type) cell, lower BIC is better.
result = select_model(X, n_components=range(1, 6), criterion="bic", n_init=1,
                      random_state=0)
print(result)
print(result.best_params)

# %%
# The BIC curves and the chosen model's classification.
fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
plot.criterion_curves(result, ax=axes[0])
plot.classification(result.best_model, X, ax=axes[1])
plt.show()
