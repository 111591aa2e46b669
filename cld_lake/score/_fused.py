"""The fused CLD kernel: the three sums of each row in one pass over its losses (numba).

Per row it computes ``e_t = (l_{t+1} - l_t) - (l_1 - l_0)`` with the same float64 operations as
the NumPy kernel and the SQL/Polars engines (so ``Q == 0`` marks exactly the same degenerate
rows), and accumulates ``A = sum e_t u'_t``, ``B = sum e_t``, ``Q = sum e_t^2`` in registers:
one read of the block, no temporaries. Compiled once per input dtype and cached on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def row_sums_fused(loss, labels, u, a_out, b_out, q_out):  # pragma: no cover - compiled
    n, k = loss.shape
    for i in range(n):
        c = labels[i]
        l_prev = np.float64(loss[i, 1])
        d0 = l_prev - np.float64(loss[i, 0])
        e = d0 - d0  # e_0: 0.0, or NaN when l_0 or l_1 is not finite
        a = e * u[c, 0]
        b = e
        q = e * e
        for t in range(1, k - 1):
            l_next = np.float64(loss[i, t + 1])
            e = (l_next - l_prev) - d0
            a += e * u[c, t]
            b += e
            q += e * e
            l_prev = l_next
        a_out[i] = a
        b_out[i] = b
        q_out[i] = q
