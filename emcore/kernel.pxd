# emcore's compiled kernel interface (public).
#
# A component family or posterior rule that wants its chunk loop to run without
# the GIL subclasses one of these classes in Cython and overrides the `cdef`
# methods; the engine's chunk loop (emcore/_core/_passes.pyx) calls them from
# its parallel region. Arrays are C-contiguous float64, row-major:
#   X          (n_rows, n_features)      one chunk of data
#   log_joint  (n_rows, n_components)    log p(x_i, z_i = k)
#   weights    (n_rows, n_components)    q_ik times the row's sample weight
# Kernels must be pure functions of their inputs and their own (read-only)
# parameters: the same chunk gives the same bits on any thread.
#
#     from emcore.kernel cimport FamilyKernel
#     cdef class MyKernel(FamilyKernel):
#         cdef int chunk_log_density(self, ...) noexcept nogil: ...

cdef enum:
    # Layout of the per-pass totals a posterior kernel adds to (see PosteriorKernel).
    # A rule maximises ELBO_tau(q_i) = sum_k q_ik a_ik + tau H(q_i) over its set of
    # q (tau = 1 soft, 0 hard, T tempered); f_i is that maximum, the rule's
    # objective for row i (log p(x_i) for the soft rule).
    TOTAL_OBJECTIVE = 0           # sum_i w_i f_i
    TOTAL_EXPECTED_LOG_JOINT = 1  # sum_i w_i sum_k q_ik log p(x_i, z_i = k)
    TOTAL_ENTROPY = 2             # sum_i w_i tau H(q_i)   (the rule's entropy term)
    TOTAL_MAGNITUDE = 3           # sum_i w_i (|f_i| + sum_k q_ik (|a_ik| + tau |log q_ik|))
    N_TOTALS = 4


cdef class FamilyKernel:
    """Log-densities and sufficient statistics of one family at fixed parameters."""
    cdef readonly Py_ssize_t n_components
    cdef readonly Py_ssize_t n_features
    cdef readonly Py_ssize_t n_stats   # doubles in one statistics slot
    cdef readonly bint fused_hard_step  # implements chunk_hard_step (default False)
    cdef readonly bint float32_rows     # implements the *_f32 methods (default False)
    cdef readonly bint fused_soft_step  # implements chunk_soft_step (default False)
    cdef readonly bint fused_soft_step_f32  # implements chunk_soft_step_f32 (default False)

    cdef Py_ssize_t scratch_size(self, Py_ssize_t n_rows) noexcept nogil
    # Doubles of scratch the two chunk methods need for a chunk of n_rows.

    cdef int chunk_log_density(self, const double* X, Py_ssize_t n_rows,
                               double* out, double* scratch) noexcept nogil
    # out[i, k] = log p(x_i | z_i = k). Return 0, or a non-zero code on failure.

    cdef void clear_stats(self, double* stats) noexcept nogil
    # Set one slot to the statistics of no data.

    cdef int chunk_accumulate(self, const double* X, Py_ssize_t n_rows,
                              const double* weights, double* stats,
                              double* scratch) noexcept nogil
    # Add the weighted statistics of the chunk to `stats`. Return 0 or a code.

    cdef void merge_stats(self, double* into, const double* other) noexcept nogil
    # into <- statistics of the union of the data behind `into` and `other`.

    cdef int chunk_accumulate_hard(self, const double* X, Py_ssize_t n_rows,
                                   const Py_ssize_t* labels, const double* row_weights,
                                   double* one_hot, double* stats,
                                   double* scratch) noexcept nogil
    # Hard assignment: add the statistics of row i to component labels[i], with
    # weight row_weights[i] (NULL means 1). The default writes the weights as an
    # (n_rows, n_components) one-hot array into `one_hot` and calls
    # chunk_accumulate; a kernel may override it to skip that array.

    cdef int chunk_hard_step(self, const double* X, Py_ssize_t n_rows,
                             const double* log_weights, const double* row_weights,
                             double* work, double* scratch, Py_ssize_t* labels,
                             double* row_value, double* totals,
                             double* stats) noexcept nogil
    # Optional (set fused_hard_step = True): the hard rule's E-step fused with
    # chunk_accumulate_hard, for kernels that can find the argmax without writing
    # log-densities first (k-means). labels[i] = argmax_k log p(x_i | k) +
    # log_weights[k] (ties: the lowest k), row_value[i] = that maximum, totals
    # incremented as the hard posterior kernel does, and, if stats is not NULL,
    # the statistics of each row added to its component. work: n_rows *
    # n_components doubles; scratch: scratch_size(n_rows). Return 0, or 1 + the
    # index of the first row with no finite value.

    cdef int chunk_soft_step(self, const double* X, Py_ssize_t n_rows,
                             const double* log_weights, const double* row_weights,
                             double* resp_sum, double* row_value, double* totals,
                             double* stats, double* scratch) noexcept nogil
    # Optional (set fused_soft_step = True): the exact soft posterior (a rule
    # kernel with exact_soft) fused with chunk_accumulate, for kernels that can
    # form q without writing log-densities first (the discrete families: exp-free
    # products of tables). resp_sum[k] += row_weights[i] q_ik row after row, in
    # row order (the sums the chunk loop would add from q; q itself is not
    # written: nothing else of a fused pass reads it), row_value[i] = log p(x_i), totals
    # incremented as the soft posterior kernel does (each row scaled by
    # row_weights[i], NULL means 1), and, if stats is not NULL, the statistics of
    # the weights row_weights[i] q_ik added. scratch: scratch_size(n_rows).
    # Return 0, or 1 + the index of the first row with no finite likelihood.

    # float32 rows (set float32_rows = True): the same four methods on a chunk of
    # float32 data, with every other array, and every sum, still float64. The pass
    # calls them for a float32 X; a kernel without them gets each chunk converted
    # to float64 (docs/elbo_chain.md#float32).
    cdef int chunk_log_density_f32(self, const float* X, Py_ssize_t n_rows,
                                   double* out, double* scratch) noexcept nogil
    cdef int chunk_accumulate_f32(self, const float* X, Py_ssize_t n_rows,
                                  const double* weights, double* stats,
                                  double* scratch) noexcept nogil
    cdef int chunk_accumulate_hard_f32(self, const float* X, Py_ssize_t n_rows,
                                       const Py_ssize_t* labels, const double* row_weights,
                                       double* one_hot, double* stats,
                                       double* scratch) noexcept nogil
    cdef int chunk_hard_step_f32(self, const float* X, Py_ssize_t n_rows,
                                 const double* log_weights, const double* row_weights,
                                 double* work, double* scratch, Py_ssize_t* labels,
                                 double* row_value, double* totals,
                                 double* stats) noexcept nogil
    # Optional (set fused_soft_step_f32 = True): chunk_soft_step on float32 rows.
    # Such a kernel may also compute the posterior's exps in float32; its
    # family's log_density_rounding then bounds that too (docs/elbo_chain.md#float32).
    cdef int chunk_soft_step_f32(self, const float* X, Py_ssize_t n_rows,
                                 const double* log_weights, const double* row_weights,
                                 double* resp_sum, double* row_value, double* totals,
                                 double* stats, double* scratch) noexcept nogil


cdef class PosteriorKernel:
    """Turns a chunk's log joint probabilities into q (a posterior rule)."""
    cdef readonly bint hard   # q is a point mass: the kernel writes labels
    cdef readonly bint exact_soft  # q = softmax of the log joint, the totals at
                                   # temperature 1: a family may fuse (chunk_soft_step)

    cdef int chunk_posterior(self, double* log_joint, double* resp, double* row_value,
                             const double* row_weights, Py_ssize_t n_rows,
                             Py_ssize_t n_components, double* totals,
                             Py_ssize_t* labels) noexcept nogil
    # In: log_joint. Out: row_value[i] = f_i; totals[0:N_TOTALS] incremented as laid
    # out above, each row scaled by row_weights[i] (NULL means 1).
    # A soft kernel (hard = False) overwrites log_joint by log q and writes
    # resp = q; `labels` is NULL. A hard kernel writes labels[i] = the component
    # of row i and, only if resp is not NULL, also q (one-hot) into resp and
    # log q (0 or -inf) into log_joint.
    # Return 0, or 1 + the index of the first row that has no finite likelihood.
