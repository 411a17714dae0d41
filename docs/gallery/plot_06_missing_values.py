"""
Missing values
==============

``GaussianMixture(missing="marginalize")`` fits data with ``np.nan`` entries by
exact EM for the observed-data likelihood (docs: missing values). When entries
are missing at random — here x1 goes missing more often where x0 is large —
dropping the incomplete rows is biased; marginalizing is not.
"""

import numpy as np

import emcore

rng = np.random.default_rng(0)
cov = [[1.0, 0.8], [0.8, 1.0]]
X = np.vstack([rng.multivariate_normal([0, 0], cov, 300),
               rng.multivariate_normal([4, 4], cov, 300)])
Xm = X.copy()
gone = rng.random(len(X)) < np.where(X[:, 0] > 4.0, 0.9, 0.1)
Xm[gone, 1] = np.nan
print(f"{gone.mean():.0%} of the rows miss x1")

gm = emcore.GaussianMixture(2, missing="marginalize", random_state=0).fit(Xm)
print("EM with the gaps:  ", np.round(gm.means_[np.argsort(gm.means_[:, 0])], 2).tolist())

complete = ~np.isnan(Xm).any(axis=1)
cc = emcore.GaussianMixture(2, random_state=0).fit(Xm[complete])
print("complete rows only:", np.round(cc.means_[np.argsort(cc.means_[:, 0])], 2).tolist())
print("true means:         [[0, 0], [4, 4]]")

# %%
# Conditional means fill the gaps, with their conditional standard deviations.
filled, std = gm.impute([[0.0, np.nan], [4.0, np.nan]], return_std=True)
print(np.round(filled, 2))
print(np.round(std, 2))
