"""Blocked retrieval metrics against a brute-force full-matrix reference."""

import numpy as np
import pytest

from medclip_jax.evaluation import retrieval


def brute_force_ranks(images, texts, image_positives, text_positives):
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    sim = images.astype(np.float64) @ texts.astype(np.float64).T

    def ranks(matrix, positives):
        out = []
        for q, row in enumerate(matrix):
            pos = set(int(p) for p in positives[q] if p >= 0)
            best = max(row[p] for p in pos)
            out.append(1 + sum(1 for j, s in enumerate(row) if j not in pos and s > best))
        return np.array(out)

    return ranks(sim, image_positives), ranks(sim.T, text_positives)


def random_embeddings(seed, num_images, num_texts, dim=8):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(num_images, dim)).astype(np.float32),
            rng.normal(size=(num_texts, dim)).astype(np.float32))


def check_against_brute_force(images, texts, image_pos, text_pos, block_sizes=(1, 7, 64, 4096)):
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
    assert image_pos.shape == (10, 3)
    check_against_brute_force(images, texts, image_pos, text_pos)


def test_duplicate_captions_are_one_text_with_several_images():
    captions = [["a cat"], ["a dog", "a puppy"], ["a cat "], ["a bird"], ["a dog"]]
    texts, image_pos, text_pos = retrieval.build_positives(captions)
    assert texts == ["a cat", "a dog", "a puppy", "a bird"]
    assert sorted(p for p in text_pos[0] if p >= 0) == [0, 2]
    assert sorted(p for p in image_pos[1] if p >= 0) == [1, 2]
    images, text_emb = random_embeddings(2, 5, 4)
    check_against_brute_force(images, text_emb, image_pos, text_pos)


def test_hand_made_ranks_and_metrics():
    images = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    texts = np.array([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6]])
    image_pos, text_pos = retrieval.positives_from_pairs([1, 0, 2], 3)
    # image 0 -> its text 1 is the best match: rank 1. image 1 -> text 0 exact: rank 1.
    # image 2 (0.6, 0.8): scores text0 0.8, text1 0.6, text2 0.96 -> rank 1.
    result = retrieval.retrieval_metrics(images, texts, image_pos, text_pos, ks=(1, 2),
                                         block_size=2, return_ranks=True)
    np.testing.assert_array_equal(result["i2t_ranks"], [1, 1, 1])
    # text 2 (0.8, 0.6): image0 0.8, image1 0.6, image2 0.96 -> rank 1.
    np.testing.assert_array_equal(result["t2i_ranks"], [1, 1, 1])
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    texts = np.array([[1.0, 0.0], [0.9, 0.1]])  # both texts closest to image 0
    image_pos, text_pos = retrieval.positives_from_pairs([0, 1], 2)
    result = retrieval.retrieval_metrics(images, texts, image_pos, text_pos, ks=(1, 5),
                                         return_ranks=True)
    # image 1 still prefers its own text (0.11 > 0), but text 1 prefers image 0.
    np.testing.assert_array_equal(result["i2t_ranks"], [1, 1])
    np.testing.assert_array_equal(result["t2i_ranks"], [1, 2])
    assert result["t2i_R@1"] == 0.5 and result["t2i_R@5"] == 1.0
    assert result["t2i_mean_rank"] == 1.5 and result["t2i_median_rank"] == 1.5


def test_ties_count_in_the_query_favour():
    images = np.array([[1.0, 0.0]])
    texts = np.array([[1.0, 0.0], [1.0, 0.0]])
    image_pos, text_pos = retrieval.positives_from_pairs([0, 0], 1)
    i2t, _ = retrieval.retrieval_ranks(images, texts, image_pos, text_pos)
    assert i2t.tolist() == [1]
    image_pos = np.array([[1]])
    text_pos = np.array([[-1], [0]])
    with pytest.raises(ValueError, match="at least one positive"):
        retrieval.retrieval_ranks(images, texts, image_pos, text_pos)


def test_k_beyond_candidates_and_many_blocks_agree():
    images, texts = random_embeddings(3, 37, 41)
    image_of_text = np.random.default_rng(3).integers(0, 37, size=41)
    image_of_text[:37] = np.arange(37)  # every image has at least one caption
    image_pos, text_pos = retrieval.positives_from_pairs(image_of_text, 37)
    results = [retrieval.retrieval_metrics(images, texts, image_pos, text_pos,
                                           ks=(1, 5, 200), block_size=b) for b in (5, 16, 100)]
    assert results[0] == results[1] == results[2]
    assert results[0]["i2t_R@200"] == 1.0 and results[0]["t2i_R@200"] == 1.0
    check_against_brute_force(images, texts, image_pos, text_pos, block_sizes=(5,))


def test_tiles_never_exceed_block_size(monkeypatch):
    shapes = []
    original = retrieval._tile_counts

    def spy(images, texts, *args):
        shapes.append((images.shape[0], texts.shape[0]))
        return original(images, texts, *args)

    monkeypatch.setattr(retrieval, "_tile_counts", spy)
    images, texts = random_embeddings(4, 50, 50)
    image_pos, text_pos = retrieval.positives_from_pairs(np.arange(50), 50)
    retrieval.retrieval_ranks(images, texts, image_pos, text_pos, block_size=16)
    assert shapes and all(a <= 16 and b <= 16 for a, b in shapes)
    assert len(shapes) == 16  # ceil(50/16)^2 tiles
