/* The HMM recursions' small-K loops (emcore/_core/_markov.pyx), in C with
   restrict so that they vectorise along the inner index; each sum's order is
   fixed by the loop (never by threads). */
#ifndef EMCORE_MARKOV_H
#define EMCORE_MARKOV_H

static void emm_fwd_step(const double* restrict A, const double* restrict a,
                         double* restrict out, Py_ssize_t K) {
    /* out[j] = sum_i a[i] A[i, j] */
    for (Py_ssize_t j = 0; j < K; j++) out[j] = a[0] * A[j];
    for (Py_ssize_t i = 1; i < K; i++) {
        const double ai = a[i];
        const double* restrict Ai = A + i * K;
        for (Py_ssize_t j = 0; j < K; j++) out[j] += ai * Ai[j];
    }
}
static void emm_bwd_step(const double* restrict AT, const double* restrict w,
                         double* restrict out, Py_ssize_t K) {
    /* out[i] = sum_j A[i, j] w[j], with AT = A.T (row-major) */
    for (Py_ssize_t i = 0; i < K; i++) out[i] = w[0] * AT[i];
    for (Py_ssize_t j = 1; j < K; j++) {
        const double wj = w[j];
        const double* restrict ATj = AT + j * K;
        for (Py_ssize_t i = 0; i < K; i++) out[i] += wj * ATj[i];
    }
}
static void emm_outer_acc(const double* restrict a, const double* restrict w,
                          double* restrict S, Py_ssize_t n, Py_ssize_t K) {
    /* S[i, j] += sum_r a[r, i] w[r, j], rows r in order */
    for (Py_ssize_t r = 0; r < n; r++) {
        const double* restrict ar = a + r * K;
        const double* restrict wr = w + r * K;
        for (Py_ssize_t i = 0; i < K; i++) {
            const double ai = ar[i];
            double* restrict Si = S + i * K;
            for (Py_ssize_t j = 0; j < K; j++) Si[j] += ai * wr[j];
        }
    }
}
static void emm_viterbi_step(const double* restrict lA, const double* restrict d,
                             double* restrict best, int* restrict arg,
                             Py_ssize_t K) {
    /* best[j] = max_i d[i] + lA[i, j], arg[j] = the lowest maximising i */
    for (Py_ssize_t j = 0; j < K; j++) { best[j] = d[0] + lA[j]; arg[j] = 0; }
    for (Py_ssize_t i = 1; i < K; i++) {
        const double di = d[i];
        const double* restrict lAi = lA + i * K;
        for (Py_ssize_t j = 0; j < K; j++) {
            const double v = di + lAi[j];
            if (v > best[j]) { best[j] = v; arg[j] = (int)i; }
        }
    }
}

#endif
