/* emcore/vec4.h: 4-double vectors for compiled kernels (emcore's own, in
   plugins/_gaussian_full.h, _gaussian_diag.h, _lloyd.h and _soft_posterior.h,
   and a third party's: compile with include_dirs=[emcore.get_include()] and
   #include "emcore/vec4.h").

   EMC_CLONES compiles a function twice with GCC on x86-64 glibc Linux (an
   AVX2/FMA clone chosen at load time, and baseline x86-64); no -march needed.
   musl has no IFUNC, so elsewhere it is empty; EMC_NO_CLONES defined empties it
   too, so that the baseline code can be tested on an AVX2 machine.
   EMC_HAVE_CLONES is 1 where it compiles the clones; there a kernel may also
   carry a third, x86-64-v4 (AVX-512) loop of its own, with target("arch=
   x86-64-v4") and chosen at run time with __builtin_cpu_supports (the full
   Gaussian kernel's statistics tiles: plugins/_gaussian_full.h). Such a loop
   keeps the 4-lane sums, each 8-double vector holding two 4-double
   accumulators, so that it gives the same bits as the AVX2 clone; a third
   target_clones entry would only re-compile the 4-double code.

   EMC_GNUC is 1 where the GNU C extensions the kernels use (vector types and
   their lane masks, __builtin_shuffle, function attributes) are available, 0
   elsewhere (MSVC). EMC_NO_GNU_EXTENSIONS defined sets it to 0 on GCC and clang
   too: the build then takes every plain-C fallback (the struct below, the
   scalar Lloyd step, the scalar soft posterior), so that those paths are
   compiled and tested on the development machines (ci/kernels_fallback.sh). */
#ifndef EMCORE_VEC4_H
#define EMCORE_VEC4_H
#include <string.h>
#if defined(__GNUC__) && !defined(EMC_NO_GNU_EXTENSIONS)
#define EMC_GNUC 1
#else
#define EMC_GNUC 0
#endif
#if EMC_GNUC && !defined(__clang__) && defined(__x86_64__) \
    && defined(__linux__) && defined(__GLIBC__) && __GNUC__ >= 12 \
    && !defined(EMC_NO_CLONES)   /* CFLAGS=-DEMC_NO_CLONES: the baseline build only */
#define EMC_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define EMC_HAVE_CLONES 1
#else
#define EMC_CLONES
#define EMC_HAVE_CLONES 0
#endif

/* 4 doubles: GNU vector extensions where available (one ymm with AVX2, two
   xmm otherwise), a plain struct elsewhere (MSVC). Same operations and order. */
#if EMC_GNUC
typedef double emc_v4 __attribute__((vector_size(32)));
static inline emc_v4 emc_load(const double* p) { emc_v4 v; memcpy(&v, p, sizeof v); return v; }
static inline void emc_store(double* p, emc_v4 v) { memcpy(p, &v, sizeof v); }
static inline emc_v4 emc_set1(double x) { emc_v4 v = {x, x, x, x}; return v; }
#define EMC_ADD(a, b) ((a) + (b))
#define EMC_SUB(a, b) ((a) - (b))
#define EMC_MUL(a, b) ((a) * (b))
#define EMC_LANE(v, i) ((v)[i])
/* lane masks (all ones or zero per lane, as a comparison gives them) and the
   branch-free select mask ? a : b; GNU vectors only (the k-means and posterior
   kernels guard their uses with EMC_GNUC) */
typedef long long emc_m4 __attribute__((vector_size(32)));
#define EMC_SEL(mask, a, b) ((emc_v4)(((mask) & (emc_m4)(a)) | (~(mask) & (emc_m4)(b))))
#else
typedef struct { double x[4]; } emc_v4;
static emc_v4 emc_load(const double* p) { emc_v4 v; memcpy(&v, p, sizeof v); return v; }
static void emc_store(double* p, emc_v4 v) { memcpy(p, &v, sizeof v); }
static emc_v4 emc_set1(double x) { emc_v4 v = {{x, x, x, x}}; return v; }
static emc_v4 emc_add_(emc_v4 a, emc_v4 b) { int i; for (i = 0; i < 4; i++) a.x[i] += b.x[i]; return a; }
static emc_v4 emc_sub_(emc_v4 a, emc_v4 b) { int i; for (i = 0; i < 4; i++) a.x[i] -= b.x[i]; return a; }
static emc_v4 emc_mul_(emc_v4 a, emc_v4 b) { int i; for (i = 0; i < 4; i++) a.x[i] *= b.x[i]; return a; }
#define EMC_ADD(a, b) emc_add_(a, b)
#define EMC_SUB(a, b) emc_sub_(a, b)
#define EMC_MUL(a, b) emc_mul_(a, b)
#define EMC_LANE(v, i) ((v).x[i])
#endif
#define EMC_FMA(acc, a, b) ((acc) = EMC_ADD(acc, EMC_MUL(a, b)))
/* CALL(NV), NV = the number of 4-double vectors (1..4, a constant) in the next
   block of at most 16 of the `remaining` entries: kernels keep that many
   vectors in registers; this picks the compiled width at run time */
#define EMC_WITH_NV(remaining, CALL) do { switch ((remaining) >= 16 ? 4 : (int)((remaining) / 4)) { \
        case 4: CALL(4); break;                                                   \
        case 3: CALL(3); break;                                                   \
        case 2: CALL(2); break;                                                   \
        default: CALL(1); break; } } while (0)
/* small helpers the kernels want inlined whatever the compiler's heuristics */
#if EMC_GNUC
#define EMC_ALWAYS_INLINE __attribute__((always_inline)) static inline
#else
#define EMC_ALWAYS_INLINE static __inline
#endif
#define EMC_HSUM(v) ((EMC_LANE(v, 0) + EMC_LANE(v, 1)) + (EMC_LANE(v, 2) + EMC_LANE(v, 3)))

#endif
