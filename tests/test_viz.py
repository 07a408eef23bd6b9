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
