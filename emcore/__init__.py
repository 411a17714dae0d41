"""emcore: expectation-maximization for latent-variable models.

A compiled core runs the E-step/M-step loop over sufficient statistics, chunk by
chunk, without the GIL; component families and posterior rules are plugins found
through a pluggy registry; every fit records the ELBO chain

    loglik(theta_t) = ELBO(q_t, theta_t) <= ELBO(q_t, theta_{t+1}) <= loglik(theta_{t+1}).
"""

from emcore._version import __version__
from emcore.constraints import Constraints
from emcore.exceptions import (ChainViolationWarning, ConvergenceWarning,
                               DegenerateComponentError, NotFittedError)
from emcore.gaussian_mixture import GaussianMixture
from emcore.mixture_model import MixtureModel
from emcore.kmeans import KMeans
from emcore.priors import GaussianPrior
from emcore.model_selection import ModelSelection, select_model  # after GaussianMixture
from emcore.registry import registered_family
from emcore.bayesian_mixture import BayesianGaussianMixture
from emcore.hidden_markov import HiddenMarkovModel
from emcore.persistence import load

__all__ = ["GaussianMixture", "MixtureModel", "KMeans", "GaussianPrior", "ModelSelection", "select_model",
           "Constraints", "ChainViolationWarning", "ConvergenceWarning",
           "DegenerateComponentError", "NotFittedError", "__version__", "registered_family",
           "BayesianGaussianMixture", "HiddenMarkovModel", "load"]
