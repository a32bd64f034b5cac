"""Input pipeline: shapes, determinism, epochs, process sharding, resumable state, eval padding."""

import io

import grain
import ml_collections
import numpy as np
import pytest
from PIL import Image

from helpers import set_dotted
from medclip_jax.data import image_ops, pipeline, sources, tokenizers
from medclip_jax.errors import UserError

TINY = "synthetic_medical@tiny"
TINY_TRAIN = 96  # records in the tiny config's splits
TINY_VALIDATION = 32
SIZE = 16
MAX_LEN = 24


def data_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict({
        "data_dir": data_dir,
        "train_mixture": f"{TINY}/train",
        "tokenizer": "bytes",
        "augment": {"random_crop_scale": (0.5, 1.0), "flip": True},
        "mean": image_ops.CLIP_MEAN,
        "std": image_ops.CLIP_STD,
        "read_threads": 2,
        "prefetch_batches": 2,
    })
    for key, value in overrides.items():
        set_dotted(config, key, value)
    return config


TOKENIZER = tokenizers.load_tokenizer("bytes")


def train_iter(config, batch: int = 16, process_index: int = 0, process_count: int = 1,
               seed: int = 0) -> grain.DatasetIterator:
    return pipeline.make_train_iterator(
        config, image_size=SIZE, max_len=MAX_LEN, tokenizer=TOKENIZER, global_batch_size=batch,
        process_index=process_index, process_count=process_count, seed=seed)


def take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def eval_batches(data_dir, split="validation", batch=8, process_index=0, process_count=1,
                 config=None, text_field="caption"):
    return list(pipeline.make_eval_iterator(
        data_dir, TINY, split, image_size=SIZE, max_len=MAX_LEN, tokenizer=TOKENIZER,
        global_batch_size=batch, process_index=process_index, process_count=process_count,
        data_config=config, text_field=text_field))


def test_train_batch_shapes_and_dtypes(tiny_data_dir):
    batch = next(train_iter(data_config(tiny_data_dir), batch=8))
    assert batch["image"].shape == (8, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
    assert batch["text_ids"].shape == (8, MAX_LEN) and batch["text_ids"].dtype == np.int32
    assert batch["text_mask"].shape == (8, MAX_LEN) and batch["text_mask"].dtype == np.int32
    assert batch["index"].dtype == np.int64 and batch["source"].dtype == np.int32
    assert np.abs(batch["image"]).max() < 3  # normalised
    lengths = batch["text_mask"].sum(1)
    assert (batch["text_ids"][np.arange(8), lengths - 1] == TOKENIZER.eos_id).all()


def test_same_seed_same_batches_other_seed_differs(tiny_data_dir):
    config = data_config(tiny_data_dir)
    first = take(train_iter(config), 3)
    assert_batches_equal(first, take(train_iter(config), 3))
    other = take(train_iter(config, seed=1), 3)
    assert not np.array_equal(first[0]["index"], other[0]["index"])


def test_each_epoch_is_a_new_permutation(tiny_data_dir):
    config = data_config(tiny_data_dir, **{"augment.random_crop_scale": (1.0, 1.0),
                                           "augment.flip": False})
    batches = take(train_iter(config), 2 * TINY_TRAIN // 16)
    per_epoch = TINY_TRAIN // 16
    epoch0 = np.concatenate([b["index"] for b in batches[:per_epoch]])
    epoch1 = np.concatenate([b["index"] for b in batches[per_epoch:]])
    assert sorted(epoch0) == list(range(TINY_TRAIN)) == sorted(epoch1)
    assert not np.array_equal(epoch0, epoch1)
    # Without augmentation, a train image is exactly the eval transform of its record.
    source = sources.open_source(tiny_data_dir, TINY, "train")
    row = 3
    record = source[int(batches[0]["index"][row])]
    expected = image_ops.normalize(image_ops.center_crop_resize(
        image_ops.decode_image(record["image"], "x"), SIZE))
    np.testing.assert_allclose(batches[0]["image"][row], expected, atol=1e-6)
    ids, _ = TOKENIZER([record["caption"]], MAX_LEN)
    np.testing.assert_array_equal(batches[0]["text_ids"][row], ids[0])


def test_augmentation_varies_with_position(tiny_data_dir):
    config = data_config(tiny_data_dir, **{"augment.random_crop_scale": (0.3, 0.5)})
    batches = take(train_iter(config), 2 * TINY_TRAIN // 16)
    per_epoch = TINY_TRAIN // 16
    index0 = np.concatenate([b["index"] for b in batches[:per_epoch]])
    index1 = np.concatenate([b["index"] for b in batches[per_epoch:]])
    images0 = np.concatenate([b["image"] for b in batches[:per_epoch]])
    images1 = np.concatenate([b["image"] for b in batches[per_epoch:]])
    record = index0[0]
    assert not np.allclose(images0[0], images1[int(np.flatnonzero(index1 == record)[0])])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_concatenate_to_the_global_batch(tiny_data_dir, process_count):
    config = data_config(tiny_data_dir)
    global_batches = take(train_iter(config, batch=16), 3)
    local = [take(train_iter(config, batch=16, process_index=p, process_count=process_count), 3)
             for p in range(process_count)]
    for k in range(3):
        for p in range(process_count):
            assert local[p][k]["image"].shape[0] == 16 // process_count
        joined = {key: np.concatenate([local[p][k][key] for p in range(process_count)])
                  for key in global_batches[k]}
        assert_batches_equal([joined], [global_batches[k]])


def test_batch_not_divisible_by_processes(tiny_data_dir):
    with pytest.raises(UserError, match="batch_size"):
        train_iter(data_config(tiny_data_dir), batch=10, process_count=4)


def test_state_round_trip(tiny_data_dir):
    config = data_config(tiny_data_dir)
    iterator = train_iter(config)
    take(iterator, 3)
    state = iterator.get_state()
    expected = take(iterator, 2)
    fresh = train_iter(config)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 2), expected)


def test_orbax_checkpoint_of_iterator(tiny_data_dir, tmp_path):
    import orbax.checkpoint as ocp
    config = data_config(tiny_data_dir)
    iterator = train_iter(config)
    take(iterator, 3)
    manager = ocp.CheckpointManager(
        tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(create=True),
        item_handlers={"data": grain.checkpoint.CheckpointHandler()})
    manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    expected = take(iterator, 2)
    fresh = train_iter(config)
    manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    manager.close()
    assert_batches_equal(take(fresh, 2), expected)


def test_mixture_weights(tiny_data_dir):
    config = data_config(tiny_data_dir, train_mixture=f"{TINY}/train:3,{TINY}/validation:1")
    batches = take(train_iter(config), 8)
    source = np.concatenate([b["source"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    assert abs((source == 1).mean() - 0.25) < 0.05
    assert index[source == 1].max() < TINY_VALIDATION
    first_validation_epoch = index[source == 1][:TINY_VALIDATION]
    assert sorted(first_validation_epoch) == list(range(TINY_VALIDATION))
    assert pipeline.num_examples(config, config.train_mixture) == TINY_TRAIN + TINY_VALIDATION


def test_mixture_weighted_by_size_samples_like_the_concatenation(tiny_data_dir):
    config = data_config(tiny_data_dir,
                         train_mixture=f"{TINY}/train:size,{TINY}/validation:size")
    source = np.concatenate([b["source"] for b in take(train_iter(config), 8)])
    expected = TINY_VALIDATION / (TINY_TRAIN + TINY_VALIDATION)
    assert abs((source == 1).mean() - expected) < 0.05
    with pytest.raises(UserError, match="mixes ':size' with numeric weights"):
        sources.parse_mixture(f"{TINY}/train:size,{TINY}/validation:2")


@pytest.mark.parametrize("batch,process_count", [(8, 1), (12, 2), (12, 3), (64, 4)])
def test_eval_covers_every_record_once(tiny_data_dir, batch, process_count):
    per_process = [eval_batches(tiny_data_dir, batch=batch, process_index=p,
                                process_count=process_count) for p in range(process_count)]
    expected_batches = -(-TINY_VALIDATION // batch)
    assert all(len(b) == expected_batches for b in per_process)
    index = np.concatenate([np.concatenate([per_process[p][k]["index"]
                                            for p in range(process_count)])
                            for k in range(expected_batches)])
    valid = np.concatenate([np.concatenate([per_process[p][k]["valid"]
                                            for p in range(process_count)])
                            for k in range(expected_batches)])
    assert index.shape == (expected_batches * batch,)
    np.testing.assert_array_equal(index[valid], np.arange(TINY_VALIDATION))
    assert (index[~valid] == -1).all() and valid.sum() == TINY_VALIDATION
    for b in per_process[0]:
        assert b["image"].shape == (batch // process_count, SIZE, SIZE, 3)
        assert b["valid"].dtype == np.bool_


def test_eval_images_and_captions_match_records(tiny_data_dir):
    batches = eval_batches(tiny_data_dir, split="test", batch=16)
    annotations = sources.load_annotations(tiny_data_dir, TINY, "test")
    source = sources.open_source(tiny_data_dir, TINY, "test")
    expected = image_ops.normalize(image_ops.center_crop_resize(
        image_ops.decode_image(source[20]["image"], "x"), SIZE))
    np.testing.assert_allclose(batches[1]["image"][4], expected, atol=1e-6)
    ids, mask = TOKENIZER(list(annotations["caption"][:16]), MAX_LEN)
    np.testing.assert_array_equal(batches[0]["text_ids"], ids)
    np.testing.assert_array_equal(batches[0]["text_mask"], mask)
    assert list(pipeline.make_eval_iterator(  # re-iterable
        tiny_data_dir, TINY, "test", image_size=SIZE, max_len=MAX_LEN, tokenizer=TOKENIZER,
        global_batch_size=16, process_index=0, process_count=1))[0]["index"][0] == 0


def test_load_annotations_and_metadata(tiny_data_dir):
    annotations = sources.load_annotations(tiny_data_dir, TINY, "validation")
    assert set(annotations) == {"id", "caption", "label", "modality", "class_name"}
    assert all(len(v) == TINY_VALIDATION for v in annotations.values())
    assert annotations["label"].dtype == np.int64
    assert set(annotations["modality"].tolist()) == {"chest_xray", "histopathology"}
    vqa = sources.load_annotations(tiny_data_dir, TINY, "validation", fields=["vqa"])["vqa"]
    assert isinstance(vqa[0]["question"][0], str)
    tasks = sources.dataset_metadata(tiny_data_dir, TINY)["tasks"]
    assert "class_names" in tasks["chest_xray"]
    with pytest.raises(UserError, match="no field"):
        sources.load_annotations(tiny_data_dir, TINY, "validation", fields=["report"])


def test_parse_mixture():
    entries = sources.parse_mixture("synthetic_medical/train, roco@v2/train[:90%]:0.25")
    assert entries == [sources.MixtureEntry("synthetic_medical", "train", 1.0),
                       sources.MixtureEntry("roco@v2", "train[:90%]", 0.25)]
    assert entries[1].dataset == "roco" and entries[1].config == "v2"
    for bad in ("", "synthetic_medical", "a/train:0", "a/train:-1", "a/train:x", "a b/train"):
        with pytest.raises(UserError, match="config.data.train_mixture"):
            sources.parse_mixture(bad)
    with pytest.raises(UserError, match="config.eval.split"):
        sources.parse_mixture("nope", field="config.eval.split")


def test_missing_dataset_and_split(tiny_data_dir, tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "synthetic_medical")):
        next(train_iter(data_config(str(tmp_path))))
    with pytest.raises(UserError, match="does_not_exist"):
        sources.open_source(tiny_data_dir, "synthetic_medical@does_not_exist", "train")
    with pytest.raises(UserError, match="train, validation, test"):
        sources.open_source(tiny_data_dir, TINY, "dev")


def test_config_defaults_to_default_or_only_config(tiny_data_dir, tmp_path):
    # Only `tiny` is built here, so the bare name resolves to it.
    assert sources.dataset_dir(tiny_data_dir, "synthetic_medical").endswith("tiny/1.0.0")
    for version_dir in ("ds/small/1.0.0", "ds/default/1.2.0", "ds/default/1.10.0",
                        "ds/default/incomplete.XYZ_2.0.0", "ds/default/3.0.0", "flat/0.1.0"):
        (tmp_path / version_dir).mkdir(parents=True)
        if "3.0.0" not in version_dir:  # a version without dataset_info.json is incomplete
            (tmp_path / version_dir / "dataset_info.json").write_text("{}")
    assert sources.dataset_dir(str(tmp_path), "ds") == str(tmp_path / "ds/default/1.10.0")
    assert sources.dataset_dir(str(tmp_path), "ds@small") == str(tmp_path / "ds/small/1.0.0")
    assert sources.dataset_dir(str(tmp_path), "flat") == str(tmp_path / "flat/0.1.0")
    (tmp_path / "ds/default/1.2.0/dataset_info.json").unlink()
    (tmp_path / "ds/default/1.10.0/dataset_info.json").unlink()
    assert sources.dataset_dir(str(tmp_path), "ds") == str(tmp_path / "ds/small/1.0.0")
    (tmp_path / "ds/big/1.0.0").mkdir(parents=True)
    (tmp_path / "ds/big/1.0.0/dataset_info.json").write_text("{}")
    with pytest.raises(UserError, match="big, small; name one as 'ds@<config>/<split>'"):
        sources.dataset_dir(str(tmp_path), "ds")


def write_corrupt_dataset(data_dir: str) -> None:
    """A 4-record figure/caption dataset (no other fields) whose record 2 is truncated."""
    import tensorflow_datasets as tfds

    class CorruptFigures(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("0.1.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, disable_shuffling=True,
                                         features=tfds.features.FeaturesDict({
                                             "id": tfds.features.Text(),
                                             "image": tfds.features.Image(shape=(None, None, 3)),
                                             "caption": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(4):
                buffer = io.BytesIO()
                Image.new("RGB", (8, 8), (i, 0, 0)).save(buffer, "PNG")
                data = buffer.getvalue()
                yield i, {"id": f"fig-{i}", "image": data if i != 2 else data[:30],
                          "caption": f"figure {i}"}

    CorruptFigures(data_dir=data_dir, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig())


def test_corrupt_image_names_dataset_record_and_id(tmp_path):
    write_corrupt_dataset(str(tmp_path))
    batches = pipeline.make_eval_iterator(
        str(tmp_path), "corrupt_figures", "train", image_size=8, max_len=8, tokenizer=TOKENIZER,
        global_batch_size=4, process_index=0, process_count=1)
    with pytest.raises(UserError, match=r"corrupt_figures/0\.1\.0 split train record 2 "
                                        r"\(id fig-2\)"):
        list(batches)


@pytest.mark.slow
def test_worker_processes_give_identical_batches(tiny_data_dir):
    from absl import flags
    marked = not flags.FLAGS.is_parsed()
    if marked:
        flags.FLAGS.mark_as_parsed()  # grain's mp_prefetch reads absl flags
    try:
        expected = take(train_iter(data_config(tiny_data_dir)), 3)
        iterator = train_iter(data_config(tiny_data_dir, worker_processes=2))
        assert_batches_equal(take(iterator, 3), expected)
        iterator.close()
    finally:
        if marked:
            flags.FLAGS.unparse_flags()


def test_eval_batches_read_the_datasets_fields_not_the_training_caption_field(tiny_data_dir):
    """A checkpoint trained on `captions` (or any field the evaluated dataset lacks) still
    evaluates: eval iterators take the dataset's fields as arguments, images only by default."""
    trained_on_captions = ml_collections.ConfigDict({"caption_field": "captions"})
    images_only = eval_batches(tiny_data_dir, split="test", batch=16,
                               config=trained_on_captions, text_field=None)
    assert "text_ids" not in images_only[0] and images_only[0]["image"].shape[0] == 16
    with_text = eval_batches(tiny_data_dir, split="test", batch=16, config=trained_on_captions)
    for a, b in zip(images_only, with_text):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["index"], b["index"])
