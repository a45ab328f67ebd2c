"""Fixed-shape batching: chunk plans, zero padding and slicing back (sinfusion.runtimes.fixed)."""

from __future__ import annotations

import numpy as np
import pytest

from sinfusion.runtimes.fixed import pad_rows, plan_chunks, run_chunked


def covered(chunks):
    return [(c.start, c.count, c.batch) for c in chunks]


def test_plans_cover_every_row_exactly_once():
    for sizes in ([1], [4], [1, 4], [2, 3, 8]):
        for n in range(1, 20):
            for cost in (0.5, 1.0, 8.0):
                chunks = plan_chunks(n, sizes, cost)
                assert sum(c.count for c in chunks) == n
                assert [c.start for c in chunks] == list(np.cumsum([0] + [c.count for c in chunks])[:-1])
                assert all(c.batch in sizes and 1 <= c.count <= c.batch for c in chunks)


def test_cpu_cost_splits_small_remainders_gpu_cost_pads():
    # sizes 1 and 4: on the CPU (call_cost 1) 2 rows are two exact calls, 3 rows one padded call.
    assert covered(plan_chunks(2, [1, 4], 1.0)) == [(0, 1, 1), (1, 1, 1)]
    assert covered(plan_chunks(3, [1, 4], 1.0)) == [(0, 3, 4)]
    # On a GPU (call_cost 8) one padded call wins even for 2 rows.
    assert covered(plan_chunks(2, [1, 4], 8.0)) == [(0, 2, 4)]
    # Exact multiples never pad.
    assert covered(plan_chunks(8, [1, 4], 1.0)) == [(0, 4, 4), (4, 4, 4)]
    # Only batch 4 exported: 5 rows become 4 + 1 padded to 4.
    assert covered(plan_chunks(5, [4], 1.0)) == [(0, 4, 4), (4, 1, 4)]


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch must be >= 1"):
        plan_chunks(0, [1])
    with pytest.raises(ValueError, match="positive"):
        plan_chunks(3, [])


def test_pad_rows_zero_fills():
    a = np.ones((2, 3), np.float32)
    padded = pad_rows(a, 4)
    assert padded.shape == (4, 3) and padded[:2].all() and not padded[2:].any()
    assert pad_rows(a, 2) is a


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9])
def test_run_chunked_matches_unbatched_rowwise_function(n):
    """A fake fixed-batch engine that refuses other batch sizes: results come back in order."""
    rng = np.random.default_rng(n)
    feed = {"x": rng.standard_normal((n, 3, 2, 2)).astype(np.float32),
            "t": rng.standard_normal(n).astype(np.float32)}
    calls = []

    def engine(batch, part):
        assert all(a.shape[0] == batch for a in part.values())
        calls.append(batch)
        return part["x"] * 2.0 + part["t"][:, None, None, None]

    out = run_chunked(feed, [1, 4], engine)
    np.testing.assert_array_equal(out, feed["x"] * 2.0 + feed["t"][:, None, None, None])
    assert sum(calls) >= n and set(calls) <= {1, 4}


def test_run_chunked_rejects_ragged_batches():
    with pytest.raises(ValueError, match="share the batch size"):
        run_chunked({"x": np.zeros((2, 1)), "t": np.zeros(3)}, [1], lambda b, p: p["x"])
