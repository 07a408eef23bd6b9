import numpy as np

from captioner.datasets import CaptionRecord, load_split
from captioner.preprocessing import caption_arrays, caption_dataset
from captioner.vocab import Vocabulary


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
    dataset = caption_dataset(records, vocab, 32, 5, 20, batch_size=8, shuffle=True, seed=0)
    features, targets = next(iter(dataset))
    assert features["images"].shape == (8, 32, 32, 3) and features["images"].dtype.name == "uint8"
    assert features["tokens"].shape == targets.shape == (8, 5, 21)
    first_epoch = [f["tokens"].numpy() for f, _ in dataset]
    assert sum(len(t) for t in first_epoch) == 32
    assert np.all(np.concatenate(first_epoch)[:, :, 0] == vocab.start_id)
