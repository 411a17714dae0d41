/* emcore/moments.h: weighted moments about a reference point, their slot layout
   and their exact merge (the Gaussian kernels' and the k-means kernel's; a
   third party's compiled family can use them: include_dirs=[emcore.get_include()],
   then #include "emcore/moments.h", or `cimport emcore.moments` in Cython).

   The moments of a weighted set of rows x_i (d features) about a point c:

       W = sum_i w_i,   r = sum_i w_i (x_i - c),   S = sum_i w_i (x_i - c)(x_i - c)^T

   c is any point near the rows (a chunk's weighted mean, as rounded; the
   previous iteration's mean), r the rounding residual of c (zero when c is the
   exact mean): keeping it makes (W, c, r, S) exact moments about c, so the
   centred scatter S - r r^T / W is accurate at any data offset (never raw
   E[x x^T] - mu mu^T). S is stored in one of three shapes:

       EMC_SCATTER_FULL      d x d, row-major, both triangles
       EMC_SCATTER_DIAGONAL  d, its diagonal (per-feature moments)
       EMC_SCATTER_TRACE     1, its trace sum_i w_i ||x_i - c||^2

   Moving the reference point to c - delta is exact algebra:

       r <- r + W delta,   S <- S + r delta^T + delta r^T + W delta delta^T   (old r)

   and two sets merge by moving both to a common point and adding. Each shape
   writes that update in its own form (the diagonal's 2 r_j delta_j, the
   trace's 2 r.delta + W |delta|^2), rounded as the kernels always have, so
   the same inputs give the same bits as before the merge was shared. */
#ifndef EMCORE_MOMENTS_H
#define EMCORE_MOMENTS_H
#include <Python.h>   /* Py_ssize_t */
#include <stdlib.h>
#include <string.h>

enum { EMC_SCATTER_FULL = 0, EMC_SCATTER_DIAGONAL = 1, EMC_SCATTER_TRACE = 2 };

/* Doubles in a scatter of the given shape. */
static inline Py_ssize_t emc_scatter_size(Py_ssize_t d, int shape)
{
    return shape == EMC_SCATTER_FULL ? d * d : shape == EMC_SCATTER_DIAGONAL ? d : 1;
}

/* One component's moments slot, as the Gaussian kernels store it:
   [W, c (d), r (d), S (emc_scatter_size(d, shape))]; W <= 0 means no rows. */
#define EMC_SLOT_WEIGHT(d) 0
#define EMC_SLOT_REFERENCE(d) 1
#define EMC_SLOT_RESIDUAL(d) (1 + (d))
#define EMC_SLOT_SCATTER(d) (1 + 2 * (d))
static inline Py_ssize_t emc_moment_slot_size(Py_ssize_t d, int shape)
{
    return EMC_SLOT_SCATTER(d) + emc_scatter_size(d, shape);
}

/* (W, r, S) about c -> about c - delta, in place (the update above). */
static inline void emc_shift_moments(Py_ssize_t d, int shape, double W, double* r,
                                     double* S, const double* delta)
{
    Py_ssize_t j, l;
    double cross = 0.0, dd = 0.0;
    switch (shape) {
    case EMC_SCATTER_FULL:
        for (j = 0; j < d; j++)
            for (l = 0; l < d; l++)
                S[j * d + l] += r[j] * delta[l] + delta[j] * r[l] + W * delta[j] * delta[l];
        break;
    case EMC_SCATTER_DIAGONAL:
        for (j = 0; j < d; j++) S[j] += 2.0 * r[j] * delta[j] + W * delta[j] * delta[j];
        break;
    default:
        for (j = 0; j < d; j++) {
            cross += delta[j] * r[j];
            dd += delta[j] * delta[j];
        }
        S[0] += 2.0 * cross + W * dd;
    }
    for (j = 0; j < d; j++) r[j] += W * delta[j];
}

/* (r, S) += (rb, Sb) moved to c - delta first (rb, Sb about c, weight Wb). */
static inline void emc_add_shifted_moments(Py_ssize_t d, int shape, double* r, double* S,
                                           double Wb, const double* rb, const double* Sb,
                                           const double* delta)
{
    Py_ssize_t j, l;
    double cross = 0.0, dd = 0.0;
    switch (shape) {
    case EMC_SCATTER_FULL:
        for (j = 0; j < d; j++)
            for (l = 0; l < d; l++)
                S[j * d + l] += (Sb[j * d + l] + rb[j] * delta[l] + delta[j] * rb[l]
                                 + Wb * delta[j] * delta[l]);
        break;
    case EMC_SCATTER_DIAGONAL:
        for (j = 0; j < d; j++)
            S[j] += Sb[j] + 2.0 * rb[j] * delta[j] + Wb * delta[j] * delta[j];
        break;
    default:
        for (j = 0; j < d; j++) {
            cross += delta[j] * rb[j];
            dd += delta[j] * delta[j];
        }
        S[0] += Sb[0] + 2.0 * cross + Wb * dd;
    }
    for (j = 0; j < d; j++) r[j] += rb[j] + Wb * delta[j];
}

/* The moment merge: (W, c, r, S) <- the moments of the union of the rows behind
   it and behind (Wb, cb, rb, Sb), both sets non-empty (the caller's slot layout
   says what empty is). The common reference point is the weighted mean of the
   two, c + (Wb / W)(cb - c) as rounded (a double, stored as is: the shifts
   c_old - c and cb - c are then exact when the points are close, Sterbenz), or,
   with keep_reference, the first set's c (only the second set moves). tmp: 2 d
   doubles of scratch, holding on return the two shifts c_old - c and cb - c. */
static inline void emc_merge_moments(Py_ssize_t d, int shape, int keep_reference,
                                     double* W, double* c, double* r, double* S,
                                     double Wb, const double* cb, const double* rb,
                                     const double* Sb, double* tmp)
{
    double Wa = *W, Wn = Wa + Wb, f = Wb / Wn, cn;
    double* da = tmp;       /* c_old - c_new */
    double* db = tmp + d;   /* cb - c_new */
    Py_ssize_t j;
    for (j = 0; j < d; j++) {
        cn = keep_reference ? c[j] : c[j] + f * (cb[j] - c[j]);
        da[j] = c[j] - cn;
        db[j] = cb[j] - cn;
        c[j] = cn;
    }
    if (!keep_reference) emc_shift_moments(d, shape, Wa, r, S, da);
    emc_add_shifted_moments(d, shape, r, S, Wb, rb, Sb, db);
    *W = Wn;
}

/* into <- the merge of two moments slots (layout above); an empty side (W <= 0)
   leaves the other as it is. tmp: 2 d doubles of scratch. */
static inline void emc_merge_moment_slots(Py_ssize_t d, int shape, double* into,
                                          const double* other, double* tmp)
{
    if (other[EMC_SLOT_WEIGHT(d)] <= 0.0) return;
    if (into[EMC_SLOT_WEIGHT(d)] <= 0.0) {
        memcpy(into, other, (size_t)emc_moment_slot_size(d, shape) * sizeof(double));
        return;
    }
    emc_merge_moments(d, shape, 0, into + EMC_SLOT_WEIGHT(d), into + EMC_SLOT_REFERENCE(d),
                      into + EMC_SLOT_RESIDUAL(d), into + EMC_SLOT_SCATTER(d),
                      other[EMC_SLOT_WEIGHT(d)], other + EMC_SLOT_REFERENCE(d),
                      other + EMC_SLOT_RESIDUAL(d), other + EMC_SLOT_SCATTER(d), tmp);
}

/* The same for n_slots consecutive slots of each (one per component), with the
   scratch on the stack or, for d > 32, allocated. Returns 0, or -1 when the
   scratch could not be allocated (nothing merged). */
static inline int emc_merge_moment_slot_arrays(Py_ssize_t n_slots, Py_ssize_t d, int shape,
                                               double* into, const double* other)
{
    double stack_tmp[64];
    double* tmp = 2 * d <= 64 ? stack_tmp : (double*)malloc((size_t)(2 * d) * sizeof(double));
    Py_ssize_t k, size = emc_moment_slot_size(d, shape);
    if (tmp == NULL) return -1;
    for (k = 0; k < n_slots; k++)
        emc_merge_moment_slots(d, shape, into + k * size, other + k * size, tmp);
    if (tmp != stack_tmp) free(tmp);
    return 0;
}

#endif
