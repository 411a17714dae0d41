"""
A hidden Markov model
=====================

``emcore.HiddenMarkovModel`` fits a first-order HMM whose emission is any
registered family; forward-backward hands the state posteriors to the family's
own statistics and M-step, and the EM chain is checked every iteration as for a
mixture (docs: hidden Markov models). Conventions are hmmlearn's: sequences laid
end to end in ``X`` with their ``lengths``.
"""

import matplotlib.pyplot as plt
import numpy as np

import emcore

rng = np.random.default_rng(0)
A = np.array([[0.95, 0.05], [0.10, 0.90]])   # two sticky regimes
lengths = [500, 300, 200]                    # three sequences
z = []
for T in lengths:
    state = 0
    for _ in range(T):
        z.append(state)
        state = rng.choice(2, p=A[state])
z = np.array(z)
X = np.where(z[:, None] == 0, rng.normal(1.0, 1.0, (1000, 2)),
             rng.normal(4.0, 2.0, (1000, 2)))

hmm = emcore.HiddenMarkovModel(2, family="gaussian", random_state=0).fit(X, lengths)
order = np.argsort(hmm.means_[:, 0])         # states are found up to a relabelling
print(hmm.transmat_[np.ix_(order, order)].round(2))
print(hmm.means_[order].round(1))
print(hmm.converged_, all(it.chain_holds() for it in hmm.history_))
path = np.argsort(order)[hmm.predict(X, lengths)]     # Viterbi, in the true labels
print("Viterbi path agrees with the true states on", round(float(np.mean(path == z)), 3))

# %%
# The first sequence: the data, the true regime and the state posterior.
post = hmm.predict_proba(X, lengths)[:, order[1]]
fig, ax = plt.subplots(figsize=(8, 3), layout="constrained")
ax.plot(X[:500, 0], lw=0.6, color="0.6", label="x[:, 0]")
ax.plot(4 * z[:500], lw=1, label="true regime (×4)")
ax.plot(4 * post[:500], lw=1, label="q(regime 1) (×4)")
ax.set_xlabel("t")
ax.legend(loc="upper right")
plt.show()
