import numpy as np
import pytest
from PIL import Image

from captioner.data.images import load_image, open_image
from captioner.errors import CaptionerError


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert open_image(tmp_path / "rotated.jpg").size == (20, 40)


def test_transparency_is_composited_on_white(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png", 4).min() == 255


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "P", "I;16"])
def test_every_mode_becomes_uint8_rgb(tmp_path, mode):
    suffix = "jpg" if mode == "CMYK" else "png"
    Image.new(mode, (10, 6)).save(tmp_path / f"x.{suffix}")
    array = load_image(tmp_path / f"x.{suffix}", 5)
    assert array.shape == (5, 5, 3) and array.dtype == np.uint8


def test_sixteen_bit_is_scaled_not_clamped(tmp_path):
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(tmp_path / "deep.png")
    assert abs(int(load_image(tmp_path / "deep.png", 4)[0, 0, 0]) - 128) <= 1


def test_missing_and_non_image_files_raise_one_line_errors(tmp_path):
    with pytest.raises(CaptionerError, match="no such file"):
        load_image(tmp_path / "missing.png", 8)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(CaptionerError, match="not a JPEG, PNG") as info:
        load_image(tmp_path / "notes.png", 8)
    assert "\n" not in str(info.value)


def test_only_image_formats_a_captioner_needs_are_opened(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "disguised.png", format="TIFF")
    with pytest.raises(CaptionerError, match="not a JPEG, PNG"):
        load_image(tmp_path / "disguised.png", 8)


def test_truncated_files_are_an_error(tmp_path):
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(CaptionerError, match="cannot decode"):
        load_image(tmp_path / "cut.jpg", 8)


def test_animated_images_use_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert load_image(tmp_path / "anim.gif", 8)[0, 0, 0] > 200
