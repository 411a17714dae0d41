# emcore's weighted moments about a reference point: their slot layout and their
# exact merge, declared for Cython (public: compiled families cimport it). The C is
# emcore/include/emcore/moments.h, which documents each function; an extension
# that cimports this module adds emcore.kernel.get_include() to its include_dirs.
#
#     from emcore.moments cimport EMC_SCATTER_FULL, emc_merge_moment_slots

cdef extern from "emcore/moments.h" nogil:
    # the shape a scatter S is stored in: d x d, its diagonal (d), its trace (1)
    enum:
        EMC_SCATTER_FULL
        EMC_SCATTER_DIAGONAL
        EMC_SCATTER_TRACE
    Py_ssize_t emc_scatter_size(Py_ssize_t d, int shape) noexcept

    # one component's slot: [W, c (d), r (d), S (emc_scatter_size(d, shape))]
    Py_ssize_t EMC_SLOT_WEIGHT(Py_ssize_t d) noexcept
    Py_ssize_t EMC_SLOT_REFERENCE(Py_ssize_t d) noexcept
    Py_ssize_t EMC_SLOT_RESIDUAL(Py_ssize_t d) noexcept
    Py_ssize_t EMC_SLOT_SCATTER(Py_ssize_t d) noexcept
    Py_ssize_t emc_moment_slot_size(Py_ssize_t d, int shape) noexcept

    void emc_shift_moments(Py_ssize_t d, int shape, double W, double* r, double* S,
                           const double* delta) noexcept
    void emc_add_shifted_moments(Py_ssize_t d, int shape, double* r, double* S, double Wb,
                                 const double* rb, const double* Sb,
                                 const double* delta) noexcept
    void emc_merge_moments(Py_ssize_t d, int shape, bint keep_reference, double* W,
                           double* c, double* r, double* S, double Wb, const double* cb,
                           const double* rb, const double* Sb, double* tmp) noexcept
    void emc_merge_moment_slots(Py_ssize_t d, int shape, double* into, const double* other,
                                double* tmp) noexcept
    int emc_merge_moment_slot_arrays(Py_ssize_t n_slots, Py_ssize_t d, int shape,
                                     double* into, const double* other) noexcept
