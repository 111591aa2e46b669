"""The compiled one-pass kernel (_ckernel.c) and the NumPy kernel compute the same three sums."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cld_lake.score._kernel import row_sums


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 50),
    k=st.integers(3, 12),
    c=st.integers(1, 4),
    dtype=st.sampled_from(["float16", "float32", "float64"]),
    seed=st.integers(0, 2**32 - 1),
    threads=st.sampled_from([1, 2]),
)
def test_fused_equals_numpy_kernel(n, k, c, dtype, seed, threads):
    rng = np.random.default_rng(seed)
    loss = (rng.random((n, k)) * 5).astype(dtype)
    special = rng.random((n, k))
    loss[special < 0.03] = np.nan
    loss[(special > 0.97)] = np.inf
    loss[rng.random(n) < 0.2] = 1.5  # constant rows: Q == 0 exactly in both kernels
    labels = rng.integers(0, c, n)
    u = rng.normal(size=(c, k - 1))
    fused = row_sums(loss, labels, u, threads=threads, kernel="fused")
    plain = row_sums(loss, labels, u, threads=threads, kernel="numpy")
    for f, p in zip(fused, plain, strict=True):
        np.testing.assert_array_equal(np.isnan(f), np.isnan(p))
        np.testing.assert_allclose(f, p, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(fused[2] == 0, plain[2] == 0)


def test_fused_kernel_checks_shapes_and_labels_before_running_unchecked_code():
    loss = np.arange(12, dtype=np.float32).reshape(3, 4)
    with pytest.raises(ValueError, match="reference table"):
        row_sums(loss, np.zeros(3, np.int64), np.zeros((1, 2)), kernel="fused")
    with pytest.raises(ValueError, match="label"):
        row_sums(loss, np.array([0, 1, 5]), np.zeros((2, 3)), kernel="fused")


def test_the_compiled_kernel_is_built_in_this_install():
    from cld_lake.score._kernel import _fused_kernel

    assert _fused_kernel() is not None, (
        "cld_lake/score/_ckernel.c was not compiled: is gcc installed?"
    )


def test_the_public_kernel_name_is_the_kernel_that_runs():
    from cld_lake.score import kernel_name  # what `cld-lake env` reports

    assert kernel_name() == "fused"
