"""
Posterior regularization
========================

Fit the mixture while its posterior obeys what you know: here, at most 30% of
the eruptions belong to component 0. The E-step becomes the KL projection of the
posterior onto the constraint set, and EM keeps J = loglik − KL non-decreasing
(docs: posterior regularization).
"""

import emcore
from emcore.datasets import load_old_faithful

X = load_old_faithful()
free = emcore.GaussianMixture(2, random_state=0).fit(X)
print(f"unconstrained: component 0 holds {free.predict_proba(X)[:, 0].mean():.3f}")

C = emcore.Constraints(proportions={0: (None, 0.30)})   # share of component 0 <= 30%
gm = emcore.GaussianMixture(2, random_state=0, posterior=C).fit(X)
print(" t  J = loglik - KL  log-likelihood  lambda")
for it in gm.history_:
    s = it.rule_state
    print(f"{it.iteration:2d}  {s['J']:14.6f}  {s['loglik']:14.6f}  {s['lambda'][0]:6.4f}")
print(gm.stop_reason_, all(it.chain_holds() for it in gm.history_))
print(f"constrained share {gm.predict_proba(X, constrained=True)[:, 0].mean():.6f}")

# %%
# Partial labels and forbidden components are masks (exact zeros):
# row 0 is in component 1, row 1 is not in component 0.
C = emcore.Constraints(labels={0: 1}, forbidden={1: 0})
gm = emcore.GaussianMixture(2, random_state=0, posterior=C).fit(X)
q = gm.predict_proba(X, constrained=True)
print(q[:2].round(3))
