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
