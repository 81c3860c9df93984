import numpy as np
import pytest

from spard.data import Example
from spard.selection import SELECTORS, SelectionConfig, embed_texts, make_selector
from spard.selection.embeddings import EmbeddingCache, l2_normalise
from spard.selection.safe_set import select_safe_examples


def test_registry_has_the_four_selectors():
    assert set(SELECTORS) == {"rd-dpp", "random", "relevance", "diversity"}
    with pytest.raises(ValueError, match="unknown selection method"):
        make_selector(SelectionConfig(method="nope"))


def test_relevance_prefers_items_near_the_reference_and_rd_dpp_adds_diversity():
    # pool: 5 near-copies of the reference direction, and 1 item at 60 degrees from it
    ref = np.array([[1.0, 0.0, 0.0]])
    near = l2_normalise(np.array([[1, 0.01 * i, 0] for i in range(5)], dtype=float))
    other = l2_normalise(np.array([[0.5, 0.0, 0.866]]))
    pool = np.vstack([near, other])
    rel = make_selector(SelectionConfig(method="relevance")).select(2, pool, ref)
    assert set(rel.indices.tolist()) <= set(range(5))
    dpp = make_selector(SelectionConfig(method="rd-dpp", beta=1.0)).select(2, pool, ref)
    assert 5 in dpp.indices.tolist()
    assert dpp.gains is not None and dpp.gains[0] >= dpp.gains[1]


def test_random_is_seeded_and_needs_no_embeddings():
    sel = make_selector(SelectionConfig(method="random", seed=3))
    a = sel.select(5, None, None, n_pool=100).indices
    b = make_selector(SelectionConfig(method="random", seed=3)).select(5, None, None, n_pool=100).indices
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 5


def test_budget_floor_and_min_k():
    assert SelectionConfig(ratio=0.03).budget(8220) == 246
    assert SelectionConfig(ratio=0.03, min_k=64).budget(555) == 64
    assert SelectionConfig(k=7).budget(10_000) == 7


class CountingEncoder:
    key = "test:hash-encoder"

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += len(texts)
        rng = [np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in texts]
        return np.asarray(rng, dtype=np.float32)


def test_embedding_cache_reuses_vectors_without_pickle(tmp_path):
    enc = CountingEncoder()
    first = embed_texts(["a", "b", "c"], enc, tmp_path)
    again = embed_texts(["c", "a", "d"], enc, tmp_path)
    assert enc.calls == 4  # only "d" was new the second time
    np.testing.assert_allclose(again[0], first[2])
    np.testing.assert_allclose(np.linalg.norm(again, axis=1), 1.0, rtol=1e-5)
    shards = list(EmbeddingCache(tmp_path, enc.key).dir.glob("shard-*.npz"))
    assert len(shards) == 2
    with np.load(shards[0], allow_pickle=False) as data:
        assert data["keys"].dtype.kind == "S"


def test_select_safe_examples_returns_rows_in_selection_order():
    pool = [Example(prompt=f"refuse {i}", target="No.", id=str(i), origin="safety") for i in range(20)]
    ref = [Example(prompt=f"task {i}") for i in range(100)]
    picked, selection = select_safe_examples(pool, ref, SelectionConfig(method="rd-dpp", ratio=0.05), encoder=CountingEncoder())
    assert len(picked) == 5 and [p.rank for p in picked] == list(range(5))
    assert [p.pool_index for p in picked] == selection.indices.tolist()
    row = picked[0].to_row()
    assert set(row) >= {"pool_index", "gain", "relevance", "prompt", "safe"}


def test_lm_mean_pool_encoder_ignores_padding(tiny):
    from spard.selection.embeddings import LMMeanPoolEncoder

    model, tok = tiny
    tok.padding_side = "right"
    enc = LMMeanPoolEncoder(model, tok, key="tiny", batch_size=4)
    texts = ["Ava has 3 apples.", "How can I hack a bank account without getting caught?"]
    together = enc.encode(texts)
    alone = np.vstack([enc.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_spard_select_cli_writes_rows_in_selection_order(tiny_model_dir, toy_data, tmp_path, capsys):
    import json

    from spard.cli import main

    out = tmp_path / "safe.jsonl"
    rc = main(["select", "--pool", str(toy_data["safe_pool"]), "--reference", str(toy_data["task"]),
               "--harmful-data", str(toy_data["attack"]), "--harmful-ratio", "0.25", "--ratio", "0.1",
               "--embedding-model", "base", "--model", str(tiny_model_dir), "--embedding-cache", str(tmp_path / "cache"),
               "--output", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 15  # floor(0.1 * (120 + 30))
    assert [r["rank"] for r in rows] == list(range(15))
    assert len({r["pool_index"] for r in rows}) == 15
    gains = [r["gain"] for r in rows]
    assert gains == sorted(gains, reverse=True)  # greedy MAP gains never grow
    assert all(-1 <= r["relevance"] <= 1 and r["safe"] for r in rows)
    assert "selected 15 of 768 pool rows for 150 reference prompts" in capsys.readouterr().out


def test_spard_select_takes_precomputed_embeddings_and_checks_them(toy_data, tmp_path, capsys):
    import json

    from spard.cli import main
    from spard.selection.dpp import greedy_map
    from spard.selection.rd_dpp import kernel_factor, max_cosine, quality

    pool_rows = len(toy_data["safe_pool"].read_text().splitlines())
    ref_rows = 40
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((pool_rows, 16)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    ref = pool[:ref_rows] + 0.05  # a reference close to the first pool rows
    ref = (ref / np.linalg.norm(ref, axis=1, keepdims=True)).astype(np.float32)
    np.save(tmp_path / "pool.npy", pool)
    np.save(tmp_path / "ref.npy", ref)
    out = tmp_path / "safe.jsonl"
    args = ["select", "--pool", str(toy_data["safe_pool"]), "--reference", str(toy_data["task"]), "--limit", str(ref_rows),
            "--k", "5", "--output", str(out)]
    assert main([*args, "--pool-embeddings", str(tmp_path / "pool.npy"), "--reference-embeddings", str(tmp_path / "ref.npy")]) == 0
    picked = [json.loads(line)["pool_index"] for line in out.read_text().splitlines()]
    expected = greedy_map(kernel_factor(pool, quality(max_cosine(pool, ref), 4.0)), 5).indices.tolist()
    assert picked == expected and "embeddings precomputed" in capsys.readouterr().out
    np.save(tmp_path / "short.npy", pool[:10])
    np.save(tmp_path / "raw.npy", pool * 3)
    for bad, message in (("short.npy", "expected 768 rows"), ("raw.npy", "must be L2-normalised")):
        assert main([*args, "--pool-embeddings", str(tmp_path / bad), "--reference-embeddings", str(tmp_path / "ref.npy")]) == 2
        assert message in capsys.readouterr().err
