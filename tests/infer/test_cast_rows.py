"""The inference job's narrowing of its predictions, block by block."""

from __future__ import annotations

import numpy as np

from lnr_dist.infer.inference import cast_rows


def test_cast_rows_equals_astype_and_keeps_the_same_dtype_as_is():
    array = np.random.default_rng(1).random((1000, 13), dtype=np.float32)
    narrowed = cast_rows(array, np.dtype(np.float16), block_rows=64)
    assert narrowed.dtype == np.float16
    np.testing.assert_array_equal(narrowed, array.astype(np.float16))
    assert cast_rows(array, np.dtype(np.float32)) is array
