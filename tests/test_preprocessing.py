import numpy as np

from captioner.data import CaptionRecord, load_split
from captioner.data.arrays import caption_arrays
from captioner.data.preprocessing import caption_dataset
from captioner.data.vocab import Vocabulary


def test_inputs_and_targets_are_shifted_and_padded():
    vocab = Vocabulary.build(["red circle", "blue square"])
    records = [CaptionRecord("x.png", ("red circle", "blue square"))]
    inputs, targets = caption_arrays(records, vocab, captions_per_image=3, max_caption_length=4)
    assert inputs.shape == targets.shape == (1, 3, 5)
    red, circle = vocab.index["red"], vocab.index["circle"]
    assert inputs[0, 0].tolist() == [vocab.start_id, red, circle, 0, 0]
    assert targets[0, 0].tolist() == [red, circle, vocab.end_id, 0, 0]
    assert not inputs[0, 2].any() and not targets[0, 2].any()  # missing caption: all padding


def test_dataset_batches_images_with_all_their_captions(tiny_data):
    records = load_split("shapes", tiny_data, "train")
    vocab = Vocabulary.build(c for r in records for c in r.captions)
    failures: list[str] = []
    dataset = caption_dataset(
        records,
        vocab,
        32,
        5,
        20,
        batch_size=8,
        shuffle=True,
        seed=0,
        on_error=lambda path, message: failures.append(path),
    )
    features, targets = next(iter(dataset))
    assert features["images"].shape == (8, 32, 32, 3) and features["images"].dtype.name == "uint8"
    assert features["tokens"].shape == targets.shape == (8, 5, 21)
    first_epoch = [f["tokens"].numpy() for f, _ in dataset]
    assert sum(len(t) for t in first_epoch) == 32
    assert np.all(np.concatenate(first_epoch)[:, :, 0] == vocab.start_id)
    assert failures == []


def _damage(path) -> None:
    """Cut a file to its first 100 bytes, as an interrupted copy leaves it."""
    data = open(path, "rb").read()[:100]
    open(path, "wb").write(data)


def test_a_damaged_image_loses_its_targets_and_is_reported_once(tiny_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    records = load_split("shapes", data, "train")
    _damage(records[3].image)
    vocab = Vocabulary.build(c for r in records for c in r.captions)
    failures: list[tuple[str, str]] = []
    dataset = caption_dataset(
        records, vocab, 32, 5, 20, batch_size=8, shuffle=False, on_error=lambda p, m: failures.append((p, m))
    )
    inputs, targets = caption_arrays(records, vocab, 5, 20)
    for _ in range(2):  # the second epoch comes from the cache: no second report
        got = np.concatenate([t.numpy() for _, t in dataset])
        assert got.shape == targets.shape  # as many batches as before: the damaged image stays, masked
    assert not got[3].any()  # all padding: the loss ignores it
    # the others keep theirs, in order
    np.testing.assert_array_equal(np.delete(got, 3, axis=0), np.delete(targets, 3, axis=0))
    assert [p for p, _ in failures] == [records[3].image] and "truncated" in failures[0][1]


def test_image_dataset_raises_one_line_only_when_every_image_fails(tmp_path):
    import pytest
    import tensorflow as tf

    from captioner.data.preprocessing import image_dataset, pipeline_error
    from captioner.errors import CaptionerError

    paths = [str(tmp_path / f"missing{i}.png") for i in range(3)]
    failures: list[str] = []
    with pytest.raises(tf.errors.OpError) as caught:
        list(image_dataset(paths, 16, lambda p, m: failures.append(p), "images of the test split"))
    error = pipeline_error(caught.value)
    assert isinstance(error, CaptionerError) and "\n" not in str(error)
    assert str(error).startswith("none of the 3 images of the test split could be read")
    assert sorted(failures) == sorted(paths)


def test_the_shuffled_order_is_drawn_from_the_seed_and_the_epoch_not_from_how_often_it_was_read():
    from captioner.data.preprocessing import row_order
    from captioner.distribute import EpochClock

    clock = EpochClock()
    order = row_order(10, shuffle=True, seed=3, clock=clock)
    first = [int(i) for i in order]
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert [int(i) for i in order] == first  # read again in the same epoch (an extra iterator): the same order
    clock.epoch = 1
    second = [int(i) for i in order]
    assert second != first and sorted(second) == list(range(10))
    assert [
        int(i) for i in row_order(10, shuffle=True, seed=3, clock=EpochClock(1))
    ] == second  # a resumed run at epoch 1
    assert [int(i) for i in row_order(10, shuffle=False, seed=3, clock=clock)] == list(range(10))


def test_each_process_reads_its_slice_of_every_global_batch(tiny_data):
    from captioner.distribute import InputShard

    records = load_split("shapes", tiny_data, "train")
    vocab = Vocabulary.build(c for r in records for c in r.captions)
    whole = [
        t.numpy()
        for _, t in caption_dataset(records, vocab, 32, 5, 20, batch_size=8, shuffle=True, seed=0, on_error=print)
    ]
    halves = [
        [
            t.numpy()
            for _, t in caption_dataset(
                records,
                vocab,
                32,
                5,
                20,
                batch_size=8,
                shuffle=True,
                seed=0,
                on_error=print,
                shard=InputShard(i, 2, drop_remainder=True),
            )
        ]
        for i in range(2)
    ]
    assert len(halves[0]) == len(halves[1]) == len(whole) == 4
    for batch, first, second in zip(whole, *halves):
        np.testing.assert_array_equal(np.concatenate([first, second]), batch)
