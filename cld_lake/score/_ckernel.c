/* The fused CLD kernel: the three sums of each row in one pass over its losses.
 *
 * Per row: e_t = (l_{t+1} - l_t) - (l_1 - l_0) in double precision, with the same operations
 * as the NumPy kernel and the SQL / Polars engines (so Q == 0 marks exactly the same
 * degenerate rows), accumulated in registers: A = sum e_t u'_{y,t}, B = sum e_t, Q = sum e_t^2.
 * Compiled without -ffast-math: IEEE semantics, NaN/inf propagate as in NumPy.
 * Called through ctypes (which releases the GIL); the module init only makes the shared
 * object importable so the build can place it beside the Python code.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define CLD_ROW_SUMS(NAME, T)                                                              \
    void NAME(const T *loss, int64_t n, int64_t k, const int64_t *labels, const double *u, \
              double *a_out, double *b_out, double *q_out) {                               \
        for (int64_t i = 0; i < n; i++) {                                                  \
            const T *row = loss + i * k;                                                   \
            const double *uc = u + labels[i] * (k - 1);                                    \
            double prev = (double)row[1];                                                  \
            double d0 = prev - (double)row[0];                                             \
            double e = d0 - d0; /* e_0: 0.0, or NaN when l_0 or l_1 is not finite */       \
            double a = e * uc[0], b = e, q = e * e;                                        \
            for (int64_t t = 1; t < k - 1; t++) {                                          \
                double next = (double)row[t + 1];                                          \
                e = (next - prev) - d0;                                                    \
                a += e * uc[t];                                                            \
                b += e;                                                                    \
                q += e * e;                                                                \
                prev = next;                                                               \
            }                                                                              \
            a_out[i] = a;                                                                  \
            b_out[i] = b;                                                                  \
            q_out[i] = q;                                                                  \
        }                                                                                  \
    }

CLD_ROW_SUMS(cld_row_sums_f32, float)
CLD_ROW_SUMS(cld_row_sums_f64, double)

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ckernel", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__ckernel(void) { return PyModule_Create(&module); }
