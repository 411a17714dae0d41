"""emcore's fourteen Gaussian covariance models against R's mclust (issue 20).

Reference numbers come from R 4 with mclust 6.0.0 (Debian's r-cran-mclust), run by
the R code in ``R_ME`` and ``R_BIC`` below on the same data written from Python with
17 significant digits (``_write_csv``: R reads back the very doubles we use).

1. ``me()`` from a starting partition. For each data set a fixed partition (the
   rows ranked by one column, ``rank(ties.method = "first")``, cut into G groups
   of equal size: the same in R and numpy's stable argsort) is the start of
   mclust's ``me(X, modelName, z, control = emControl(tol = c(1e-12, 1e-12)))``
   (EM from the M-step of z; both the EM and the inner M-step iterations
   tightened from mclust's defaults 1e-5 and sqrt(eps)). emcore: the M-step from
   the same z through the public family API (``chunk_stats``, ``m_step``), then
   ``GaussianMixture(weights_init=, means_init=, precisions_init=)`` with
   ``reg_covar=0`` and ``tol=1e-11``. Both stop on a relative change of the
   log-likelihood near 1e-12 on EM's linear convergence, so each is within
   ~1e-11 relative of the fixed point (measured: at most 5e-11 apart); we ask
   1e-8, the issue's requirement.

   **VVE is the exception, and the difference is mclust's.** mclust's VVE
   M-step (Fortran ``msvve``) stops before the constrained maximum: started from
   mclust's own M-step output for iris' partition, emcore's inner iteration
   (each step an exact maximisation, so Q never decreases) lowers the M-step
   objective sum_k n_k log|Sigma_k| + tr(W_k Sigma_k^-1) from -975.7127 to
   -977.0062, and 20 random starting orientations all reach -977.0062. mclust
   reports the same inner iteration count for VVE as for EVE on every data set.
   emcore's VVE fits therefore reach a higher log-likelihood than mclust's; the
   test checks that they do (``test_vve_exceeds_mclust``) and that our VVE
   M-step is a stationary point (tests/test_covariance_types.py).

2. ``mclustBIC`` over G = 1..9 and the fourteen models on faithful and iris
   (mclust's hierarchical-agglomeration start, tolerances tightened as above;
   NA where mclust's fit failed). ``select_model(covariance_types="all")``
   (k-means++ starts) must pick the same (G, model) as mclust with the same BIC
   to 1e-6 relative (mclust's sign: ``row.mclust_bic``). Other cells may reach
   other local optima from other starts; the test counts how many agree.

3. ``me()`` with mclust's conjugate prior (``priorControl()``, Fraley & Raftery
   2007) from the same partitions, for the six of the ten models beyond
   VVV/EEE/VVI/VII that mclust gives a prior (``R_ME_PRIOR``; mclust returns NA
   for VEE, EVE, VVE and EVV, and for VEI and EVI on wine). mclust's ``loglik``
   there is the log-likelihood at its MAP estimate, not the log posterior (it
   equals sum_i log sum_k pi_k N(x_i | mu_k, Sigma_k) at the returned
   parameters to 1e-12). emcore: ``GaussianMixture(prior=...)`` from the M-step of
   the partition, run with tol = 0 for a fixed number of passes: a MAP fit's
   objective converges quadratically while its log-likelihood (not the objective)
   moves linearly, so a stopping rule on the objective leaves the log-likelihood
   ~1e-7 short. Two rows are not mclust's defaults (docs/gaussian.md#mclust-prior):
   mclust's EII ignores the prior's scale (its sigma^2 is the same for
   ``priorControl(scale = 1)`` and ``scale = 1000``), so emcore's EII runs with a
   negligible scale (1e-300); mclust's EEI with a shrinkage returns the unshrunk
   means beside a covariance computed at the shrunk ones (no fixed objective), so
   EEI is compared at ``shrinkage = 0``.

The last tests re-run the R code and compare with the stored numbers when
``Rscript`` with mclust is on the PATH (skipped otherwise: CI machines may not
have R).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import sklearn.datasets

import emcore
from emcore import GaussianPrior
from emcore.datasets import load_old_faithful
from emcore.exceptions import ChainViolationWarning, ConvergenceWarning
from emcore.model_selection import select_model
from emcore.plugins._mclust_models import PRIOR_KIND
from emcore.registry import get_registry

MODELS = ("EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE", "EVE", "VVE",
          "EEV", "VEV", "EVV", "VVV")

#: data set -> (the column whose ranks make the partition (0-based), G)
PARTITIONS = {"faithful": (0, 2), "iris": (2, 3), "wine": (6, 3)}

R_ME = r"""
library(mclust)
models <- c("EII","VII","EEI","VEI","EVI","VVI","EEE","VEE","EVE","VVE","EEV","VEV","EVV","VVV")
part <- function(x, G) { n <- length(x); r <- rank(x, ties.method = "first"); floor((r - 1) * G / n) + 1 }
cases <- list(list("faithful", 1, 2), list("iris", 3, 3), list("wine", 7, 3))
for (cs in cases) {
  X <- as.matrix(read.csv(paste0(cs[[1]], ".csv"), header = FALSE))
  G <- cs[[3]]; z <- unmap(part(X[, cs[[2]]], G), groups = 1:G)
  for (m in models) {
    fit <- me(X, modelName = m, z = z, control = emControl(tol = c(1e-12, 1e-12)), warn = FALSE)
    cat(sprintf("%s %s %.17g\n", cs[[1]], m, fit$loglik))
  }
}
"""

R_BIC = r"""
library(mclust)
for (nm in c("faithful", "iris")) {
  X <- as.matrix(read.csv(paste0(nm, ".csv"), header = FALSE))
  b <- mclustBIC(X, G = 1:9, control = emControl(tol = c(1e-12, 1e-12)))
  for (g in 1:9) cat(nm, sprintf("%.17g", b[g, ]), "\n")
}
"""

#: mclust's me() log-likelihoods (R_ME's output)
ME_LOGLIK = {
    ("faithful", "EII"): -1709.6813729497401,
    ("faithful", "VII"): -1709.5292821775217,
    ("faithful", "EEI"): -1157.6800123416917,
    ("faithful", "VEI"): -1152.8801963662456,
    ("faithful", "EVI"): -1153.8855682222288,
    ("faithful", "VVI"): -1147.8063525378113,
    ("faithful", "EEE"): -1140.1867594370881,
    ("faithful", "VEE"): -1136.2598541365392,
    ("faithful", "EVE"): -1136.910260670453,
    ("faithful", "VVE"): -1132.187446402231,
    ("faithful", "EEV"): -1139.3315986554214,
    ("faithful", "VEV"): -1134.6792035194455,
    ("faithful", "EVV"): -1135.7699039359511,
    ("faithful", "VVV"): -1130.2639601847552,
    ("iris", "EII"): -401.80217578905217,
    ("iris", "VII"): -384.31409506120184,
    ("iris", "EEI"): -361.42552204311914,
    ("iris", "VEI"): -339.46872726097143,
    ("iris", "EVI"): -340.08558073720388,
    ("iris", "VVI"): -306.86046050769909,
    ("iris", "EEE"): -256.35404312570819,
    ("iris", "VEE"): -237.56016279600968,
    ("iris", "EVE"): -234.14023506030316,
    ("iris", "VVE"): -215.24087033830173,
    ("iris", "EEV"): -214.85037887350873,
    ("iris", "VEV"): -186.07328340381201,
    ("iris", "EVV"): -205.53588081751428,
    ("iris", "VVV"): -180.18547713135001,
    ("wine", "EII"): -11496.283709783615,
    ("wine", "VII"): -11183.517399108099,
    ("wine", "EEI"): -3422.7900932795296,
    ("wine", "VEI"): -3387.2480208553443,
    ("wine", "EVI"): -3310.9244567872147,
    ("wine", "VVI"): -3300.990179275424,
    ("wine", "EEE"): -3171.911556502454,
    ("wine", "VEE"): -3140.1991357521574,
    ("wine", "EVE"): -3048.9015905932683,
    ("wine", "VVE"): -3040.6314485956586,
    ("wine", "EEV"): -2921.2557225779301,
    ("wine", "VEV"): -2911.4643178928959,
    ("wine", "EVV"): -2849.7229733152103,
    ("wine", "VVV"): -2835.4741483607986,
}

#: mclust's mclustBIC tables (R_BIC's output): per G = 1..9, the fourteen models in
#: MODELS' order, mclust's sign (2 L - p ln n); NaN where mclust's fit failed (NA)
NA = math.nan
MCLUST_BIC = {
    "faithful": (
        (-4024.7214793679609, -4024.7214793679609, -3055.8348615017917,
         -3055.8348615017917, -3055.8348615017917, -3055.8348615017917,
         -2607.6225004367084, -2607.6225004367084, -2607.6225004367084,
         -2607.6225004367084, -2607.6225004367084, -2607.6225004367084,
         -2607.6225004367084, -2607.6225004367084),  # G = 1
        (-3452.9975582972579, -3458.2991788191248, -2354.6006391474598,
         -2350.6068092628511, -2352.6175529748211, -2346.0649236722875,
         -2325.2199354045329, -2322.9719268697372, -2324.2727399375681,
         -2320.4329134675459, -2329.1154159075327, -2325.4164277018558,
         -2327.5978285348851, -2322.1917430987482),  # G = 2
        (-3377.5314181253079, -3336.5326587329814, -2322.9688205159314,
         -2332.6033115926502, -2332.1145034459778, -2342.1182986324843,
         -2314.2956783837153, -2321.9317912912634, -2322.5391299993339,
         -2329.6807217208793, -2325.2019597942763, -2329.1858116854701,
         -2335.4088038004379, -2349.4419699608752),  # G = 3
        (-3230.2163822992729, -3242.7803270759036, -2323.5966016966699,
         -2331.1779167757309, -2334.4892788615548, -2332.2719051332197,
         -2320.1374821626368, -2338.7665192851719, -2361.6138093550576,
         -2362.5152856408413, -2351.299184597347, -2353.9153356157699,
         -2344.6224714210384, -2351.4293858834731),  # G = 4
        (-3149.2796973564205, -3129.0472867705143, -2325.9085948465449,
         -2347.5769806147673, -2347.4952098093931, -2350.6766030405497,
         -2327.61380263504, -2337.1881594712127, -2351.0996495339309,
         -2368.4098766805423, -2356.5540347770648, -2364.9064229931473,
         -2364.7878953856853, -2377.0758952278311),  # G = 5
        (-3081.1243077795907, -3038.1417954066546, -2336.4427312692524,
         -2358.7318440199861, -2357.4858510954782, -2373.1463137972055,
         -2347.22066238156, -2357.523550167557, -2366.1896999775568,
         -2385.7337169234147, -2365.8919740585079, -2384.0365849623909,
         -2384.0339278927536, -2385.7276673740753),  # G = 6
        (-2990.3092665579843, -2973.3370671596435, -2356.2995527361586,
         -2363.6307010500254, -2372.7406875775523, -2394.4812683695832,
         -2369.2310879628162, -2371.0535705865036, -2377.9808588730511,
         -2400.8702614253989, -2378.923492184294, -2401.1601048851348,
         -2398.57770727347, -2411.0075412832848),  # G = 7
        (-2978.0672190816922, -2933.8034498959482, -2363.9894136146454,
         -2383.714720794917, -2388.9637500872013, -2413.5361896371896,
         -2375.0222881711297, -2390.3110512703192, -2403.5269735191932,
         -2420.8923890039337, -2392.8851804312644, -2409.9701441088514,
         -2414.4490312249291, -2439.5057882002247),  # G = 8
        (-2953.2876417486286, -2919.4015097915244, -2372.6747145033169,
         -2398.1073951591684, -2407.1097215233131, -2432.5368973955042,
         -2388.3267812063027, -2406.5488342657231, -2412.5263044657772,
         -2447.0782784873504, -2399.7380856762084, -2428.8804613045827,
         -2438.417945502898, -2447.7207366061662),  # G = 9
    ),
    "iris": (
        (-1804.0854378861204, -1804.0854378861204, -1522.1201527234473,
         -1522.1201527234473, -1522.1201527234473, -1522.1201527234473,
         -829.97815436188614, -829.97815436188614, -829.97815436188614,
         -829.97815436188614, -829.97815436188614, -829.97815436188614,
         -829.97815436188614, -829.97815436188614),  # G = 1
        (-1123.4112957029486, -1012.2351797732123, -1042.9678962041764,
         -956.28226887083827, -1007.3082239844798, -857.5514938686099,
         -688.09722012637837, -656.32700543602505, -657.22627761196395,
         -605.18830907268079, -644.59969939752955, -561.72846211433819,
         -658.33063085533115, -574.01783226981604),  # G = 2
        (-878.76388098960274, -853.80899012204827, -813.04247938012327,
         -779.15016040395335, -797.83294368649638, -744.63166084322165,
         -632.96333330962636, -605.39684323857614, -666.53005265945421,
         -636.45957460960153, -642.73444383419212, -562.55070798333236,
         -656.0143083204664, -580.83890720292584),  # G = 3
        (-893.52031321609809, -812.59115601914675, -827.32608608749183,
         -748.44692188792715, -837.39494480228018, -751.01323743638727,
         -645.97463584708976, -604.8345728473721, -705.33126149025145,
         -639.72619589058502, -679.13439053373281, -602.00921054609557,
         -725.1597371597968, -626.72253112734268),  # G = 4
        (-782.62158201738498, -742.59893174414117, -741.85540648869289,
         -688.34304873537189, -766.78649573172163, -711.44894325305711,
         -604.77302901587393, NA, -722.66045417395912, -632.20833756367222,
         -649.15510331898963, -634.28438102845428, NA, -676.59448236626827),  # G = 5
        (-715.69280462452082, -705.77214298316721, -693.76726159164787,
         -676.15610113596563, -774.05362115591129, -707.28369336703031,
         -609.81519264548615, -609.54866297841511, -661.94350723561047,
         -664.86434895007483, -664.45200964298442, -672.94962179894492, NA,
         -721.42738169754784),  # G = 6
        (-731.84428431050935, -698.53831376143853, -713.12984753774344,
         -680.40636096536821, -813.46909790048198, -766.64215325095961,
         -632.40603471208715, NA, -699.49269101152822, -690.60281883557639,
         -709.95055836893084, -704.76752571074394, NA, -806.92175556837833),  # G = 7
        (-725.07113842139631, -701.47798614720341, -691.38626523733024,
         -674.41601118685003, -740.34963349170016, -764.10955101050399,
         -639.23658430639352, -654.77856101823068, -700.4200589233883,
         -705.46331681009679, -730.42969361947155, -712.87103225099986,
         -831.75123055547056, -830.63595792460103),  # G = 8
        (-694.5147364470746, -700.01745312881621, -696.25200368260789,
         -700.78503612689087, -767.76329201353519, -755.77436450919981,
         -653.07670648146416, NA, -729.65807034438717, -734.3550738600552,
         -758.92948407688948, -748.81979884022689, -882.43163475294557,
         -883.68966553255757),  # G = 9
    ),
}
#: mclust's choice from those tables
MCLUST_BEST = {"faithful": (3, "EEE"), "iris": (2, "VEV")}

R_ME_PRIOR = r"""
library(mclust)
part <- function(x, G) { n <- length(x); r <- rank(x, ties.method = "first"); floor((r - 1) * G / n) + 1 }
cases <- list(list("faithful", 1, 2), list("iris", 3, 3), list("wine", 7, 3))
priors <- list(EII = priorControl(), EEI = priorControl(shrinkage = 0), VEI = priorControl(),
               EVI = priorControl(), EEV = priorControl(), VEV = priorControl())
for (cs in cases) {
  X <- as.matrix(read.csv(paste0(cs[[1]], ".csv"), header = FALSE))
  G <- cs[[3]]; z <- unmap(part(X[, cs[[2]]], G), groups = 1:G)
  for (m in names(priors)) {
    fit <- me(X, modelName = m, z = z, prior = priors[[m]],
              control = emControl(tol = c(1e-12, 1e-12)), warn = FALSE)
    if (is.na(fit$loglik)) { cat(cs[[1]], m, "NA\n"); next }
    ld <- apply(fit$parameters$variance$sigma, 3, function(s) determinant(s)$modulus)
    cat(cs[[1]], m, sprintf("%.17g", c(fit$loglik, fit$parameters$pro, ld)), "\n")
  }
}
"""

#: mclust's me() with a prior (R_ME_PRIOR's output): log-likelihood, the weights
#: pi_k and log|Sigma_k| per component; None where mclust returns NA
ME_PRIOR = {
    ("faithful", "EII"): (-1709.7258110447829, (0.36580311089199413, 0.63419688910800653),
                          (5.5708402510730162, 5.5708402510730162)),
    ("faithful", "EEI"): (-1192.6491934351202, (0.36137383950097973, 0.63862616049902043),
                          (2.3400100369436396, 2.3400100369436396)),
    ("faithful", "VEI"): (-1231.3336224030411, (0.36638433506891271, 0.63361566493108734),
                          (3.008116733367495, 2.6252561188969428)),
    ("faithful", "EVI"): (-1231.7517953205711, (0.36162569224338464, 0.63837430775661563),
                          (2.7793150715621193, 2.7793150715621193)),
    ("faithful", "EEV"): (-1139.3968425788014, (0.35803985687368517, 0.641960143126315),
                          (1.3923787835846204, 1.3923787835846211)),
    ("faithful", "VEV"): (-1134.8844082453877, (0.35649403565061261, 0.64350596434938723),
                          (0.93483393175121499, 1.6899683687347993)),
    ("iris", "EII"): (-401.95318529586962,
                      (0.33338790199108986, 0.41376561288048125, 0.25284648512842905),
                      (-8.1947678759741702, -8.1947678759741702, -8.1947678759741702)),
    ("iris", "EEI"): (-362.13731901489047,
                      (0.33333362188685584, 0.40985971958684153, 0.25680665852630258),
                      (-8.6018050693966792, -8.6018050693966792, -8.6018050693966792)),
    ("iris", "VEI"): (-345.42859053118576,
                      (0.33333333333924187, 0.39624415712684552, 0.2704225095339125),
                      (-10.349101426422319, -7.5748574832114972, -7.2810829221076494)),
    ("iris", "EVI"): (-342.25392006578647,
                      (0.33333333339068921, 0.41694753224093961, 0.24971913436837123),
                      (-8.5176048226295542, -8.5176048226295542, -8.5176048226295542)),
    ("iris", "EEV"): (-220.98822998723963,
                      (0.33333333311162477, 0.35655924573184039, 0.310107421156535),
                      (-10.328986222917964, -10.328986222917962, -10.328986222917962)),
    ("iris", "VEV"): (-198.48648143955768,
                      (0.33333333139877602, 0.34366692025312701, 0.32299974834809719),
                      (-12.055171087619861, -10.222325695059581, -8.3866846301569637)),
    ("wine", "EII"): (-11496.585448902379,
                      (0.38780197473120892, 0.34830751423262646, 0.26389051103616445),
                      (89.83352916636639, 89.83352916636639, 89.83352916636639)),
    ("wine", "EEI"): (-7263.7843212842135,
                      (0.17249167700838286, 0.59160231085917103, 0.23590601213244594),
                      (53.818465930408308, 53.818465930408308, 53.818465930408308)),
    ("wine", "VEI"): None,
    ("wine", "EVI"): None,
    ("wine", "EEV"): (-2935.099475445114,
                      (0.30879503839897054, 0.34062568526007914, 0.35057927634095026),
                      (-7.579023201164679, -7.5790232011646728, -7.5790232011646665)),
    ("wine", "VEV"): (-2924.9518503813324,
                      (0.3083168094148106, 0.34034620302513424, 0.35133698756005521),
                      (-5.8864118203402915, -4.1096840856033117, -6.7754469647936606)),
}
#: the priors R_ME_PRIOR's rows stand for (module docstring, item 3)
PRIOR_OF = {"EII": GaussianPrior(scale=1e-300), "EEI": GaussianPrior(shrinkage=0.0),
            **{m: GaussianPrior() for m in ("VEI", "EVI", "EEV", "VEV")}}
#: EM passes for the MAP fits: each reaches its fixed point to ~1e-12 (measured:
#: the log-likelihoods then agree with mclust's within 1.2e-11 relative; iris' VEI
#: needs ~300)
PRIOR_PASSES = {"faithful": 100, "iris": 350, "wine": 300}


def _data(name: str) -> np.ndarray:
    if name == "faithful":
        return load_old_faithful()
    loader = {"iris": sklearn.datasets.load_iris, "wine": sklearn.datasets.load_wine}[name]
    return np.ascontiguousarray(loader().data, dtype=np.float64)


def _partition(X: np.ndarray, column: int, G: int) -> np.ndarray:
    """One-hot (n, G): rows ranked by ``column`` (ties by row order, R's
    ties.method = "first"), cut into G groups of (nearly) equal size."""
    n = X.shape[0]
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(X[:, column], kind="stable")] = np.arange(n)
    return np.eye(G)[rank * G // n]


def _compact(covariances: np.ndarray, model: str) -> np.ndarray:
    """(k, d, d) -> the shape GaussianMixture's attributes take for ``model``."""
    if model in ("EII", "VII"):
        return covariances[:, 0, 0].copy()
    if model in ("EEI", "VEI", "EVI", "VVI"):
        return np.einsum("kjj->kj", covariances).copy()
    if model == "EEE":
        return covariances[0].copy()
    return covariances.copy()


def _me(name: str, model: str) -> emcore.GaussianMixture:
    """emcore's analogue of mclust's me(): the M-step from the partition, then EM."""
    X = _data(name)
    column, G = PARTITIONS[name]
    z = _partition(X, column, G)
    family = get_registry().family("gaussian").factory(G, X.shape[1], covariance_type=model,
                                                        reg_covar=0.0)
    params = family.m_step(family.chunk_stats(X, z), None)
    U = params["precisions_cholesky"]
    precisions = _compact(U @ np.swapaxes(U, 1, 2), model)
    gm = emcore.GaussianMixture(G, covariance_type=model, reg_covar=0.0, tol=1e-11,
                                max_iter=10000, weights_init=z.sum(axis=0) / X.shape[0],
                                means_init=params["means"], precisions_init=precisions)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChainViolationWarning)
        # tol = 1e-11 is at the chain's rounding bound for the ill-conditioned
        # fits: the engine says so (a ConvergenceWarning), which is expected here
        warnings.filterwarnings("ignore", message="The objective is known only")
        gm.fit(X)
    assert gm.stop_reason_ == "tol"
    return gm


@pytest.mark.parametrize("name", sorted(PARTITIONS))
@pytest.mark.parametrize("model", [m for m in MODELS if m != "VVE"])
def test_me_reaches_mclust_loglik(name, model):
    gm = _me(name, model)
    X = _data(name)
    loglik = gm.score(X) * X.shape[0]
    reference = ME_LOGLIK[(name, model)]
    assert abs(loglik - reference) <= 1e-8 * abs(reference), (loglik, reference)


def _me_prior(name: str, model: str) -> emcore.GaussianMixture:
    """``_me`` with the prior of PRIOR_OF[model], for PRIOR_PASSES[name] passes."""
    X = _data(name)
    column, G = PARTITIONS[name]
    z = _partition(X, column, G)
    prior = PRIOR_OF[model]
    family = get_registry().family("gaussian").factory(
        G, X.shape[1], covariance_type=model, reg_covar=0.0,
        prior=prior.resolve(X, G, None, PRIOR_KIND[model]))
    params = family.m_step(family.chunk_stats(X, z), None)
    U = params["precisions_cholesky"]
    gm = emcore.GaussianMixture(G, covariance_type=model, reg_covar=0.0, prior=prior,
                                tol=0.0, max_iter=PRIOR_PASSES[name], n_jobs=1,
                                weights_init=z.sum(axis=0) / X.shape[0],
                                means_init=params["means"],
                                precisions_init=_compact(U @ np.swapaxes(U, 1, 2), model))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ChainViolationWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)      # tol = 0: max_iter
        gm.fit(X)
    return gm


@pytest.mark.parametrize("case", sorted(k for k, v in ME_PRIOR.items() if v is not None),
                         ids="-".join)
def test_me_with_a_prior_reaches_mclust(case):
    # ~0.3-2 s each: hundreds of passes to the fixed point (PRIOR_PASSES: a MAP
    # fit's log-likelihood converges only linearly, module docstring)
    name, model = case
    X = _data(name)
    gm = _me_prior(name, model)
    loglik, weights, log_det = ME_PRIOR[case]
    ours = gm.score(X) * X.shape[0]
    assert abs(ours - loglik) <= 1e-8 * abs(loglik), (ours, loglik)
    # the parameters: mclust stops when the log-likelihood's relative change is
    # below 1e-12, which on slow fits (wine's EEI: 245 iterations) leaves them
    # ~1e-8 relative from the fixed point (measured 1.6e-8 on a weight; ours do not
    # move in the last 300 of 600 passes): 1e-7
    assert np.allclose(gm.weights_, weights, rtol=1e-7, atol=0)
    covariances = _full_covariances(gm, model)
    got = np.linalg.slogdet(covariances)[1]
    assert np.allclose(got, log_det, rtol=1e-7, atol=1e-7)
    # MAP-EM: loglik + log prior never decreased
    assert all(it.chain_holds() for it in gm.history_)


def _full_covariances(gm, model: str) -> np.ndarray:
    """(k, d, d) covariances from the estimator's compact covariances_."""
    c = np.asarray(gm.covariances_)
    k, d = gm.means_.shape
    if c.ndim == 1:
        return c[:, None, None] * np.eye(d)
    if c.ndim == 2 and c.shape == (k, d) and model != "EEE":
        return c[:, :, None] * np.eye(d)
    if c.ndim == 2:
        return np.broadcast_to(c, (k, d, d))
    return c


@pytest.mark.parametrize("name", sorted(PARTITIONS))
def test_vve_exceeds_mclust(name):
    # mclust's VVE M-step stops short of the maximiser (module docstring): from the
    # same partition emcore's exact-to-convergence M-steps climb higher
    X = _data(name)
    loglik = _me(name, "VVE").score(X) * X.shape[0]
    reference = ME_LOGLIK[(name, "VVE")]
    assert loglik > reference + 1e-6 * abs(reference), (loglik, reference)
    # and stays below the unconstrained VVV from the same start (VVE is a submodel)
    assert loglik <= ME_LOGLIK[(name, "VVV")] + 1e-8 * abs(reference)


@pytest.mark.slow      # the full grid: 2 x 126 fits (~20-70 s each on a loaded machine)
@pytest.mark.parametrize("name", sorted(MCLUST_BEST))
def test_bic_grid_picks_mclusts_model(name):
    # The grid at the default tol (1e-6 relative change: each cell's log-likelihood
    # within ~1e-5 relative of its optimum on slow EM), then the chosen cell refitted
    # from there to tol = 1e-10 for the 1e-6 comparison of its BIC.
    X = _data(name)
    result = select_model(X, n_components=range(1, 10), covariance_types="all",
                          reg_covar=0.0, n_init=3, random_state=0, max_iter=1000)
    # (n_init=3, select_model's default: from one k-means++ start per cell, faithful's
    # EEE-3 cell can stop at a lower local optimum, as mclust's single hc start can)
    assert result.covariance_types == MODELS
    k, model = MCLUST_BEST[name]
    assert result.best_params == {"n_components": k, "covariance_type": model}
    table = np.array(MCLUST_BIC[name])
    assert np.nanargmax(table) == (k - 1) * 14 + MODELS.index(model)     # mclust's pick
    best = result.best_model
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The objective is known only")
        best.set_params(warm_start=True, tol=1e-10, max_iter=10000).fit(X)
    reference = table[k - 1, MODELS.index(model)]
    assert abs(-best.bic(X) - reference) <= 1e-6 * abs(reference)
    # the cells both fit to the same optimum (k-means++ and mclust's hierarchical
    # start reach different local optima elsewhere; ours are at tol = 1e-6):
    # most of the table, and where they differ mclust is not always the higher
    ref = {(g + 1, m): table[g, j] for g in range(9) for j, m in enumerate(MODELS)}
    rel = [(r.mclust_bic - ref[r.n_components, r.covariance_type])
           / abs(ref[r.n_components, r.covariance_type]) for r in result.table
           if r.ok and math.isfinite(ref[r.n_components, r.covariance_type])]
    assert sum(abs(x) <= 1e-5 for x in rel) >= 30
    assert any(x > 1e-5 for x in rel)


# --- the R runs, re-done when R is here --------------------------------------------

def _rscript() -> str:
    exe = shutil.which("Rscript")
    if exe is None:
        pytest.skip("Rscript is not installed")
    probe = subprocess.run([exe, "-e", "library(mclust)"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("R's mclust package is not installed")
    return exe


def _write_csv(folder, names) -> None:
    for name in names:
        np.savetxt(folder / f"{name}.csv", _data(name), delimiter=",", fmt="%.17g")


def _run_r(tmp_path, script: str, names) -> list:
    exe = _rscript()
    _write_csv(tmp_path, names)
    (tmp_path / "run.R").write_text(script)
    out = subprocess.run([exe, "run.R"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return [line.split() for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.slow      # R's start-up and 42 fits: ~5-15 s
def test_stored_me_numbers_are_mclusts(tmp_path):
    rows = _run_r(tmp_path, R_ME, PARTITIONS)
    got = {(name, model): float(value) for name, model, value in rows}
    assert got.keys() == ME_LOGLIK.keys()
    for key, value in ME_LOGLIK.items():
        # the same R on the same doubles; another BLAS may round differently
        assert abs(got[key] - value) <= 1e-10 * abs(value), (key, got[key], value)


@pytest.mark.slow      # mclustBIC over 2 x 126 cells: ~1 minute of R
def test_stored_bic_tables_are_mclusts(tmp_path):
    rows = _run_r(tmp_path, R_BIC, MCLUST_BIC)
    for name in MCLUST_BIC:
        got = np.array([[math.nan if v == "NA" else float(v) for v in r[1:]]
                        for r in rows if r[0] == name])
        want = np.array(MCLUST_BIC[name])
        assert got.shape == want.shape == (9, 14)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        assert np.all(np.abs(got[ok] - want[ok]) <= 1e-10 * np.abs(want[ok]))


@pytest.mark.slow      # R's start-up and 18 MAP fits: ~5 s
def test_stored_me_prior_numbers_are_mclusts(tmp_path):
    rows = _run_r(tmp_path, R_ME_PRIOR, PARTITIONS)
    got = {(r[0], r[1]): None if r[2] == "NA" else [float(v) for v in r[2:]] for r in rows}
    assert got.keys() == ME_PRIOR.keys()
    for key, value in ME_PRIOR.items():
        if value is None:
            assert got[key] is None, key
            continue
        want = [value[0], *value[1], *value[2]]
        # the same R on the same doubles; another BLAS may round differently
        assert np.allclose(got[key], want, rtol=1e-10, atol=1e-12), (key, got[key], want)
