/* emcore/vexp.h: exp and log on 4-double vectors (GNU vector extensions only:
   defined when EMC_GNUC is 1; callers keep a scalar loop with libm's exp or log
   for the rest). */
#ifndef EMCORE_VEXP_H
#define EMCORE_VEXP_H
#include <math.h>
#include "emcore/vec4.h"

#if EMC_GNUC

/* exp(x) on 4 lanes for x <= 0 (x = -inf gives 0): x = n ln2 + r with
   n = round(x / ln2) (ln2 in two parts, n ln2_hi exact), |r| <= ln2 / 2,
   exp(r) by its Taylor series to r^13 / 13! (truncation < 1e-17 relative),
   Horner, then times 2^n built in the exponent bits. Error about 1 ulp
   (glibc's is below 1); exp(0) = 1 exactly. Lanes in [-745.2, -708.39)
   (2^n not normal) take libm's exp, so subnormal results are libm's; below,
   +0 as libm gives. */
static inline emc_v4 emc_exp_nonpos(emc_v4 x) {
    const emc_v4 shifter = emc_set1(6755399441055744.0);   /* 1.5 * 2^52 */
    const emc_v4 log2e = emc_set1(1.4426950408889634);
    const emc_v4 ln2_hi = emc_set1(0.693147180369123816490);
    const emc_v4 ln2_lo = emc_set1(1.90821492927058770002e-10);
    emc_v4 xc = EMC_SEL((emc_m4)(x > emc_set1(-708.39)), x, emc_set1(-708.39));
    emc_v4 t = xc * log2e + shifter;
    emc_v4 n = t - shifter;
    emc_v4 r = (xc - n * ln2_hi) - n * ln2_lo;
    emc_v4 p = emc_set1(1.0 / 6227020800.0);                /* 1/13! */
    p = p * r + emc_set1(1.0 / 479001600.0);
    p = p * r + emc_set1(1.0 / 39916800.0);
    p = p * r + emc_set1(1.0 / 3628800.0);
    p = p * r + emc_set1(1.0 / 362880.0);
    p = p * r + emc_set1(1.0 / 40320.0);
    p = p * r + emc_set1(1.0 / 5040.0);
    p = p * r + emc_set1(1.0 / 720.0);
    p = p * r + emc_set1(1.0 / 120.0);
    p = p * r + emc_set1(1.0 / 24.0);
    p = p * r + emc_set1(1.0 / 6.0);
    p = p * r + emc_set1(0.5);
    p = p * r + emc_set1(1.0);
    p = p * r + emc_set1(1.0);
    emc_m4 k = (emc_m4)t - (emc_m4)shifter;                 /* n as an integer */
    emc_v4 scale = (emc_v4)((k + 1023) << 52);
    emc_v4 e = p * scale;
    /* below -745.2 libm's exp is +0 too: zero without calling it (a few
       percent of the entries of separated clusters are there) */
    e = EMC_SEL((emc_m4)(x < emc_set1(-745.2)), emc_set1(0.0), e);
    emc_m4 low = (emc_m4)(x < emc_set1(-708.39)) & (emc_m4)(x >= emc_set1(-745.2));
    if (low[0] | low[1] | low[2] | low[3]) {
        for (int l = 0; l < 4; l++)
            if (low[l]) e[l] = exp(x[l]);
    }
    return e;
}

/* log x on 4 lanes, each a positive normal finite double: fdlibm's
   __ieee754_log (glibc's before 2.28) with its reduction and its polynomial:
   x = 2^k (1 + f), 1 + f in [sqrt(2)/2, sqrt(2)), s = f / (2 + f),
   log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), R of degree 14 (error below
   2^-58.45 on that range), then + k ln 2 in two parts; the result is within
   1 ulp of log x (fdlibm's bound: a libm last-place error, which the
   tolerances of docs/elbo_chain.md#error-model already allow for). k is read
   from the exponent bits and made a double exactly by the 1.5 * 2^52 shifter
   (|k| <= 1023). Always inlined: an out-of-line copy compiled for the baseline
   target, called from an AVX2 clone, would take its vector argument by another
   ABI. */
/* its constants, broadcast once in memory: read as operands of the arithmetic
   (GCC otherwise builds each emc_set1 in a loop from a 16-byte load and a lane
   insert, two instructions per constant and call) */
#define EMC_LOG_V(x) {x, x, x, x}
static const emc_v4 emc_log_consts[13] = {
    EMC_LOG_V(6755399441055744.0), EMC_LOG_V(1.4142135623730951), EMC_LOG_V(0.5),
    EMC_LOG_V(1.0), EMC_LOG_V(2.0), EMC_LOG_V(3.999999999940941908e-01),
    EMC_LOG_V(2.222219843214978396e-01), EMC_LOG_V(1.531383769920937332e-01),
    EMC_LOG_V(6.666666666666735130e-01), EMC_LOG_V(2.857142874366239149e-01),
    EMC_LOG_V(1.818357216161805012e-01), EMC_LOG_V(1.479819860511658591e-01),
    EMC_LOG_V(6.93147180369123816490e-01)};
static const emc_v4 emc_log_ln2_lo = EMC_LOG_V(1.90821492927058770002e-10);
#undef EMC_LOG_V
EMC_ALWAYS_INLINE emc_v4 emc_log_pos(emc_v4 x) {
    const emc_v4* c = emc_log_consts;
    const emc_v4 shifter = c[0];                            /* 1.5 * 2^52 */
    emc_m4 bits = (emc_m4)x;
    emc_m4 ex = ((bits >> 52) & 0x7ff) - 1023;
    emc_v4 m = (emc_v4)((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);
    emc_m4 big = (emc_m4)(m > c[1]);                        /* m in [1, 2); c[1] = sqrt 2 */
    m = EMC_SEL(big, m * c[2], m);                          /* exact */
    ex -= big;                                              /* big: -1 or 0 */
    emc_v4 k = (emc_v4)(ex + (emc_m4)shifter) - shifter;
    emc_v4 f = m - c[3];
    emc_v4 hfsq = c[2] * f * f;
    emc_v4 s = f / (c[4] + f);
    emc_v4 z = s * s, w = z * z;
    emc_v4 t1 = w * (c[5] + w * (c[6] + w * c[7]));
    emc_v4 t2 = z * (c[8] + w * (c[9] + w * (c[10] + w * c[11])));
    emc_v4 R = t2 + t1;
    return k * c[12] - ((hfsq - (s * (hfsq + R) + k * emc_log_ln2_lo)) - f);
}

#endif  /* EMC_GNUC */
#endif
