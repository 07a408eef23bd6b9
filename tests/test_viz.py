import numpy as np
from PIL import Image

from captioner.viz import caption_grid_figure


def test_caption_grid_writes_one_png_with_every_photo(tmp_path):
    images = [np.full((32, 32, 3), value, np.uint8) for value in (0, 120, 250)]
    titles = [["model: a dog runs", "human: a dog is running on the grass", "human: a brown dog"]] * 3
    caption_grid_figure(images, titles, tmp_path / "grid.png", columns=2)
    with Image.open(tmp_path / "grid.png") as picture:
        assert picture.format == "PNG" and picture.width > picture.height / 2  # two columns, two rows
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # written atomically: no temporary left


def test_an_attention_figure_with_a_title_is_taller_than_without(tmp_path):
    from captioner.viz import attention_figure

    image = np.full((64, 64, 3), 90, np.uint8)
    alpha = np.eye(1, 49, 24, dtype=np.float32)  # all the weight on the centre cell of a 7x7 grid
    attention_figure(image, ["where it looked"], alpha, (7, 7), tmp_path / "plain.png")
    attention_figure(
        image,
        ["where it looked"],
        alpha,
        (7, 7),
        tmp_path / "titled.png",
        title="is this a skate park ? model: no (58%); truth: no, and a long tail that wraps onto a second line",
    )
    with Image.open(tmp_path / "plain.png") as plain, Image.open(tmp_path / "titled.png") as titled:
        assert titled.height > plain.height  # the question sits above the panels, not over their titles
