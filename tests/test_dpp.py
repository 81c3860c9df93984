import numpy as np
import pytest

from spard.selection import (
    brute_force_greedy,
    dense_kernel,
    greedy_map,
    greedy_map_dense,
    kernel_factor,
    max_cosine,
    quality,
)


def unit_rows(rng, n, d):
    e = rng.normal(size=(n, d))
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(12))
def test_factored_matches_brute_force_on_small_kernels(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(4, 16)), int(rng.integers(2, 7))
    emb, q = unit_rows(rng, n, d), rng.random(n) ** 4
    k = int(rng.integers(1, n + 1))
    fast = greedy_map(kernel_factor(emb, q), k, eps=1e-6)
    assert fast.indices.tolist() == brute_force_greedy(dense_kernel(emb, q, 1e-6), k)


def test_factored_matches_dense_reference_on_hundreds_of_items():
    rng = np.random.default_rng(7)
    pool, ref = unit_rows(rng, 300, 24), unit_rows(rng, 80, 24)
    q = quality(max_cosine(pool, ref), 4.0)
    fast = greedy_map(kernel_factor(pool, q), 40)
    dense = greedy_map_dense(dense_kernel(pool, q, 1e-6), 40)
    assert fast.indices.tolist() == dense.indices.tolist()
    np.testing.assert_allclose(fast.gains, dense.gains, rtol=1e-6, atol=1e-12)
    # log det of the picked block equals the sum of log gains
    L = dense_kernel(pool, q, 1e-6)[np.ix_(fast.indices, fast.indices)]
    assert np.linalg.slogdet(L)[1] == pytest.approx(fast.log_det, rel=1e-8)


def test_k_beyond_rank_still_matches_dense_and_reports_eps_regime():
    rng = np.random.default_rng(3)
    emb, q = unit_rows(rng, 30, 3), rng.random(30)
    fast = greedy_map(kernel_factor(emb, q), 10)
    assert fast.indices.tolist() == greedy_map_dense(dense_kernel(emb, q, 1e-6), 10).indices.tolist()
    assert fast.rank_exhausted_at == 3
    assert np.all(fast.gains[3:] < 1e-5)


def test_edge_cases_k_zero_k_above_n_duplicates_zero_rows():
    rng = np.random.default_rng(0)
    emb = unit_rows(rng, 6, 4)
    assert greedy_map(emb, 0).indices.size == 0
    assert sorted(greedy_map(emb, 50).indices.tolist()) == list(range(6))
    dup = np.vstack([emb[:1], emb[:1], emb[1:3]])
    picks = greedy_map(dup, 3).indices.tolist()
    assert picks[:2] != [0, 1] and not {0, 1} <= set(picks)  # a duplicate adds (almost) nothing
    zero = np.vstack([np.zeros(4), emb[:3]])
    res = greedy_map(zero, 4)
    assert res.indices[-1] == 0 and res.gains[-1] == pytest.approx(1e-6)


def test_negative_relevance_counts_as_zero_quality():
    r = np.array([-0.5, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(quality(r, 4.0), [0.0, 0.0, 0.0625, 1.0])


def test_deterministic_and_rejects_bad_input():
    rng = np.random.default_rng(1)
    emb = unit_rows(rng, 50, 8)
    a, b = greedy_map(emb, 10), greedy_map(emb.copy(), 10)
    assert a.indices.tolist() == b.indices.tolist()
    with pytest.raises(ValueError, match="2-D"):
        greedy_map(emb[0], 2)
    with pytest.raises(ValueError, match="eps"):
        greedy_map(emb, 2, eps=0.0)


@pytest.mark.parametrize("seed", range(6))
def test_lazy_and_eager_updates_pick_the_same_items(seed):
    rng = np.random.default_rng(100 + seed)
    n, d = 500, 16
    emb = unit_rows(rng, n, d)
    emb[:40] = emb[0]  # a block of duplicates
    q = rng.random(n) ** 4
    lazy, eager = greedy_map(kernel_factor(emb, q), d), greedy_map(kernel_factor(emb, q), d, lazy=False)
    assert lazy.indices.tolist() == eager.indices.tolist()
    np.testing.assert_allclose(lazy.gains, eager.gains, rtol=1e-8)
    # past the rank the lazy path switches to eager updates and still returns k distinct items
    many = greedy_map(kernel_factor(emb, q), 60)
    assert len(set(many.indices.tolist())) == 60 and many.rank_exhausted_at == d


def _clustered(n: int, m: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d))
    pool = centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, d))
    ref = centres[rng.integers(0, 5, m)] + 0.3 * rng.standard_normal((m, d))
    return ((pool / np.linalg.norm(pool, axis=1, keepdims=True)).astype(np.float32),
            (ref / np.linalg.norm(ref, axis=1, keepdims=True)).astype(np.float32))


def test_blockwise_relevance_equals_the_direct_product():
    from spard.selection.rd_dpp import max_cosine

    pool, ref = _clustered(1037, 211, 24, seed=3)
    direct = (pool.astype(np.float64) @ ref.astype(np.float64).T).max(axis=1)
    for pool_block, ref_block in ((100, 17), (4096, 4096), (1, 211)):
        got = max_cosine(pool, ref, pool_block=pool_block, reference_block=ref_block)
        assert got.dtype == np.float64 and np.abs(got - direct).max() < 1e-6
    exact = max_cosine(pool, ref, pool_block=64, reference_block=64, dtype=np.float64)
    assert np.abs(exact - direct).max() < 1e-12


@pytest.mark.parametrize("seed", [0, 1])
def test_float32_factor_and_eager_greedy_pick_what_float64_picks(seed):
    from spard.selection.rd_dpp import kernel_factor, max_cosine, quality

    pool, ref = _clustered(6000, 300, 48, seed)
    rel32 = max_cosine(pool, ref, pool_block=1000, reference_block=128)
    rel64 = (pool.astype(np.float64) @ ref.astype(np.float64).T).max(axis=1)
    # k below the rank of B (48): in the eps regime beyond it, picks are decided by 1e-6-sized gains
    # that float32 cannot resolve, which is why the selector keeps float64 there
    fast = greedy_map(kernel_factor(pool, quality(rel32, 4.0), dtype=np.float32), 40, lazy=False)
    exact = greedy_map(kernel_factor(pool, quality(rel64, 4.0), dtype=np.float64), 40, lazy=True)
    assert kernel_factor(pool, quality(rel32, 4.0), dtype=np.float32).dtype == np.float32
    assert np.array_equal(fast.indices, exact.indices)
    assert np.allclose(fast.gains, exact.gains, rtol=1e-4)


@pytest.mark.parametrize("k, first_size", [(30, 200), (30, 40), (60, 100), (90, 100)])
def test_screened_greedy_picks_what_the_full_greedy_picks(k, first_size):
    from spard.selection.dpp import greedy_map_screened
    from spard.selection.rd_dpp import kernel_factor, max_cosine, quality

    pool, ref = _clustered(3000, 200, 64, seed=5)
    q = quality(max_cosine(pool, ref), 4.0)
    full = greedy_map(kernel_factor(pool, q), k)
    screened = greedy_map_screened(pool, q, k, first_size=first_size)  # 90 > rank 64: grows to the whole pool
    assert np.array_equal(screened.indices, full.indices)
    assert np.allclose(screened.gains, full.gains)
    assert screened.rank_exhausted_at == full.rank_exhausted_at
