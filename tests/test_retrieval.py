"""Blocked retrieval metrics against a brute-force full-matrix reference."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from medclip_jax.errors import UserError
from medclip_jax.evaluation import retrieval


def brute_force_ranks(images: np.ndarray, texts: np.ndarray, image_positives: np.ndarray,
                      text_positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full float64 similarity matrix; per query, sort candidates and find the best positive.

    The sort puts a query's positives before equal-scoring negatives, which is the same as
    counting ties in the query's favour.
    """
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    sim = images.astype(np.float64) @ texts.astype(np.float64).T

    def ranks(matrix: np.ndarray, positives: np.ndarray) -> np.ndarray:
        out = []
        for q, row in enumerate(matrix):
            pos = {int(p) for p in positives[q] if p >= 0}
            order = sorted(range(len(row)), key=lambda j: (-row[j], j not in pos))
            seen_negatives = 0
            for j in order:
                if j in pos:
                    break
                seen_negatives += 1
            out.append(1 + seen_negatives)
        return np.array(out)

    return ranks(sim, image_positives), ranks(sim.T, text_positives)


def random_embeddings(seed: int, num_images: int, num_texts: int, dim: int = 8
                      ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(num_images, dim)).astype(np.float32),
            rng.normal(size=(num_texts, dim)).astype(np.float32))


def check_against_brute_force(images, texts, image_pos, text_pos,
                              block_sizes=(1, 7, 64, 4096)) -> None:
    expected = brute_force_ranks(images, texts, image_pos, text_pos)
    for block in block_sizes:
        i2t, t2i = retrieval.retrieval_ranks(images, texts, image_pos, text_pos, block)
        np.testing.assert_array_equal(i2t, expected[0], err_msg=f"block {block}")
        np.testing.assert_array_equal(t2i, expected[1], err_msg=f"block {block}")


def test_one_caption_per_image():
    images, texts = random_embeddings(0, 23, 23)
    image_pos, text_pos = retrieval.positives_from_pairs(np.arange(23), 23)
    check_against_brute_force(images, texts, image_pos, text_pos)


def test_several_captions_per_image():
    images, texts = random_embeddings(1, 10, 30)
    image_pos, text_pos = retrieval.positives_from_pairs(np.arange(30) % 10, 10)
    assert image_pos.shape == (10, 3) and text_pos.shape == (30, 1)
    check_against_brute_force(images, texts, image_pos, text_pos)


def test_build_positives_merges_identical_captions():
    captions = [["a cat"], ["a dog", "a puppy"], ["a cat "], ["a bird", "  "], "a dog",
                ["A cat", "a dog"]]
    texts, image_pos, text_pos = retrieval.build_positives(captions)
    assert texts == ["a cat", "a dog", "a puppy", "a bird", "A cat"]  # case is kept
    positives = [sorted(int(p) for p in row if p >= 0) for row in text_pos]
    assert positives == [[0, 2], [1, 4, 5], [1], [3], [5]]
    assert [sorted(int(p) for p in row if p >= 0) for row in image_pos] == [
        [0], [1, 2], [0], [3], [1], [1, 4]]
    with pytest.raises(UserError, match="image 1"):
        retrieval.build_positives([["x"], [" "]])


def test_shared_and_multiple_captions_random():
    rng = np.random.default_rng(7)
    pool = [f"finding {i}" for i in range(25)]
    captions = [[pool[j] for j in rng.choice(25, size=rng.integers(1, 4), replace=False)]
                for _ in range(40)]
    texts, image_pos, text_pos = retrieval.build_positives(captions)
    assert len(texts) < sum(len(c) for c in captions)  # some captions are shared
    assert max((text_pos >= 0).sum(axis=1)) > 1 and max((image_pos >= 0).sum(axis=1)) > 1
    images, text_emb = random_embeddings(2, 40, len(texts))
    check_against_brute_force(images, text_emb, image_pos, text_pos, block_sizes=(1, 7, 40, 999))


def test_hand_made_ranks_and_metrics():
    images = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    texts = np.array([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6]])
    image_pos, text_pos = retrieval.positives_from_pairs([1, 0, 2], 3)
    # image 2 (0.6, 0.8) scores texts 0.8, 0.6 and 0.96 (its own): rank 1; likewise the rest.
    result = retrieval.retrieval_metrics(images, texts, image_pos, text_pos, ks=(1, 2),
                                         block_size=2, return_ranks=True)
    np.testing.assert_array_equal(result["i2t_ranks"], [1, 1, 1])
    np.testing.assert_array_equal(result["t2i_ranks"], [1, 1, 1])

    images = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    texts = np.array([[0.0, 1.0], [0.9, 0.1], [1.0, 0.0]])
    # text t's image: t0->0, t1->1, t2->2. Scores (rows images, cols texts):
    #   img0: [0.00, 0.99, 1.00]   own text t0 scores 0.00, two negatives above: rank 3
    #   img1: [1.00, 0.11, 0.00]   own text t1 scores 0.11, t0 above: rank 2
    #   img2: [-1.0, -0.11, 0.00]  own text t2 is the best: rank 1
    # t0 column [0, 1, -1]: image1 above image0 -> rank 2; t1 [0.99, 0.11, -0.11] -> 2;
    # t2 [1, 0, 0] -> image0 above image2, image1 ties image2 (in the query's favour) -> 2.
    image_pos, text_pos = retrieval.positives_from_pairs([0, 1, 2], 3)
    result = retrieval.retrieval_metrics(images, texts, image_pos, text_pos, ks=(1, 2, 5),
                                         block_size=2, return_ranks=True)
    np.testing.assert_array_equal(result["i2t_ranks"], [3, 2, 1])
    np.testing.assert_array_equal(result["t2i_ranks"], [2, 2, 2])
    assert result["i2t_R@1"] == pytest.approx(1 / 3) and result["i2t_R@2"] == pytest.approx(2 / 3)
    assert result["i2t_R@5"] == 1.0 and result["t2i_R@1"] == 0.0 and result["t2i_R@2"] == 1.0
    assert result["i2t_mean_rank"] == 2.0 and result["i2t_median_rank"] == 2.0
    assert result["num_images"] == 3 and result["num_texts"] == 3


def test_result_keys():
    images, texts = random_embeddings(5, 6, 6)
    result = retrieval.retrieval_metrics(images, texts,
                                         *retrieval.positives_from_pairs(np.arange(6), 6))
    expected = {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in retrieval.DEFAULT_KS}
    expected |= {f"{d}_{s}_rank" for d in ("i2t", "t2i") for s in ("mean", "median")}
    assert set(result) == expected | {"num_images", "num_texts"}


def test_ties_count_in_the_query_favour_across_blocks():
    # Identical negatives in other blocks than the positive: exact ties, never ahead.
    images = np.array([[1.0, 0.0], [0.3, 0.7], [0.3, 0.7], [0.3, 0.7]])
    texts = np.array([[1.0, 0.0], [1.0, 0.0], [0.3, 0.7], [1.0, 0.0], [0.2, 0.9]])
    image_pos, text_pos = retrieval.positives_from_pairs([0, 1, 2, 3, 3], 4)
    for block in (1, 2, 3, 8):
        i2t, t2i = retrieval.retrieval_ranks(images, texts, image_pos, text_pos, block)
        assert i2t[0] == 1  # texts 1 and 3 tie its text 0
        assert t2i[2] == 1  # images 1 and 3 tie its image 2
        expected_i2t, expected_t2i = brute_force_ranks(images, texts, image_pos, text_pos)
        np.testing.assert_array_equal(i2t, expected_i2t)
        np.testing.assert_array_equal(t2i, expected_t2i)


def test_k_beyond_candidates_and_block_sizes_agree():
    images, texts = random_embeddings(3, 37, 41)
    image_of_text = np.random.default_rng(3).integers(0, 37, size=41)
    image_of_text[:37] = np.random.default_rng(4).permutation(37)  # every image has a caption
    image_pos, text_pos = retrieval.positives_from_pairs(image_of_text, 37)
    results = [retrieval.retrieval_metrics(images, texts, image_pos, text_pos,
                                           ks=(1, 5, 41, 200), block_size=b,
                                           return_ranks=True) for b in (5, 7, 16, 100)]
    for other in results[1:]:
        np.testing.assert_array_equal(other.pop("i2t_ranks"), results[0]["i2t_ranks"])
        np.testing.assert_array_equal(other.pop("t2i_ranks"), results[0]["t2i_ranks"])
    results[0].pop("i2t_ranks"), results[0].pop("t2i_ranks")
    assert all(r == results[0] for r in results[1:])
    assert results[0]["i2t_R@41"] == 1.0 and results[0]["i2t_R@200"] == 1.0
    assert results[0]["t2i_R@200"] == 1.0
    check_against_brute_force(images, texts, image_pos, text_pos, block_sizes=(7,))


def test_tiles_never_exceed_block_size_and_compile_once(monkeypatch):
    shapes = []
    original = retrieval._similarity_tile

    def spy(images, texts, *args):
        shapes.append((images.shape, texts.shape))
        return original(images, texts, *args)

    monkeypatch.setattr(retrieval, "_similarity_tile", spy)
    images, texts = random_embeddings(4, 45, 50)
    # Text t describes image t % 45: positive pairs on the diagonal, and texts 45..49 on
    # images 0..4, i.e. in tiles (image block 0, text blocks 2 and 3).
    image_pos, text_pos = retrieval.positives_from_pairs(np.arange(50) % 45, 45)
    retrieval.retrieval_ranks(images, texts, image_pos, text_pos, block_size=16)
    assert set(shapes) == {((16, 8), (16, 8))}  # one padded shape: compiled once
    pass_one = 3 + 2  # only the tiles holding a positive pair
    pass_two = 3 * 4  # every tile: ceil(45/16) x ceil(50/16)
    assert len(shapes) == pass_one + pass_two


def test_sharded_device_arrays():
    images, texts = random_embeddings(6, 24, 32)
    image_pos, text_pos = retrieval.positives_from_pairs(np.arange(32) % 24, 24)
    mesh = jax.make_mesh((len(jax.devices()),), ("batch",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P("batch"))
    expected = retrieval.retrieval_metrics(images, texts, image_pos, text_pos, block_size=10)
    got = retrieval.retrieval_metrics(jax.device_put(images, sharding),
                                      jax.device_put(texts, sharding), image_pos, text_pos,
                                      block_size=10)
    assert got == expected


def test_bad_positives_are_rejected():
    images, texts = random_embeddings(8, 3, 3)
    image_pos, text_pos = retrieval.positives_from_pairs([0, 1, 2], 3)
    with pytest.raises(ValueError, match="at least one positive"):
        retrieval.retrieval_ranks(images, texts, np.array([[0], [-1], [2]]), text_pos)
    with pytest.raises(ValueError, match="different pairs"):
        retrieval.retrieval_ranks(images, texts, image_pos, np.array([[1], [0], [2]]))
    with pytest.raises(ValueError, match="outside"):
        retrieval.retrieval_ranks(images, texts, np.array([[0], [1], [3]]), text_pos)
    with pytest.raises(ValueError, match="image ids"):
        retrieval.positives_from_pairs([0, 3], 3)
