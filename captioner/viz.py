"""Pictures a user can look at: attention maps over an image, and training curves. PNG, written atomically.

Uses matplotlib's object API (Figure + Agg canvas), so nothing touches pyplot's global state or a display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from captioner.fileio import atomic_path


def upsample(alpha: np.ndarray, grid_shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Attention weights of one word (num_pixels,) as a (height, width) map, bilinear-upsampled to `size`."""
    grid = alpha.reshape(grid_shape).astype(np.float32)  # (grid_h, grid_w)
    resized = Image.fromarray(grid, mode="F").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized)  # (height, width)


def attention_path(out: str, image: str, single: bool) -> Path:
    """Where `caption --attention OUT` draws an image's maps: `OUT` itself for one image; `OUT-STEM_IMAGE-STEM.png`
    beside it for several."""
    out_path = Path(out)
    return out_path if single else out_path.with_name(f"{out_path.stem}_{Path(image).stem}{out_path.suffix or '.png'}")


def _save(figure: Figure, path: str | Path) -> None:
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def attention_figure(
    image: np.ndarray,
    words: Sequence[str],
    alphas: np.ndarray,
    grid_shape: tuple[int, int],
    path: str | Path,
    columns: int = 6,
    title: str | None = None,
) -> None:
    """The image, then one panel per generated word with its attention weights overlaid as a heat map.

    Args:
        image: (height, width, 3) uint8, the image as the model saw it.
        words: the generated words, `<end>` included if generated.
        alphas: (len(words), num_pixels) attention weights.
        grid_shape: (grid_h, grid_w) of the encoder's feature grid.
        path: PNG file to write.
        columns: panels per row. Defaults to 6.
        title: str. A line above the panels (wrapped), e.g. the question and the answer of a VQA model. Defaults to
        none.
    """
    panels = 1 + len(words)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(2.0 * min(panels, columns), 2.2 * rows))
    size = image.shape[:2]
    for index in range(panels):
        ax = figure.add_subplot(rows, min(panels, columns), index + 1)
        ax.imshow(image, interpolation="bilinear")
        if index == 0:
            ax.set_title("input", fontsize=10)
        else:
            heat = upsample(alphas[index - 1], grid_shape, size)
            ax.imshow(
                heat,
                cmap="inferno",
                alpha=0.6,
                interpolation="bilinear",
                extent=(-0.5, size[1] - 0.5, size[0] - 0.5, -0.5),
            )
            ax.set_title(words[index - 1], fontsize=10)
        ax.axis("off")
    if title:
        import textwrap

        lines = textwrap.wrap(title, 22 * min(panels, columns))
        figure.suptitle("\n".join(lines), fontsize=10, y=1.0 + 0.09 * len(lines), va="top")
    _save(figure, path)


def history_figure(history: dict[str, list[float]], path: str | Path) -> None:
    """Training and validation loss per epoch."""
    figure = Figure(figsize=(5, 3.2))
    ax = figure.add_subplot(1, 1, 1)
    for key, label in (("loss", "training loss"), ("val_loss", "validation loss")):
        if history.get(key):
            ax.plot(range(1, len(history[key]) + 1), history[key], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy per word")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(figure, path)


def caption_grid_figure(
    images: Sequence[np.ndarray], titles: Sequence[Sequence[str]], path: str | Path, columns: int = 5
) -> None:
    """Photos in a grid, each with lines of text below it (a generated caption and some references).

    Args:
        images: uint8 (height, width, 3) arrays.
        titles: per image, the lines to print under it; the first is drawn in bold.
        path: PNG file to write.
        columns: photos per row. Defaults to 5.
    """
    import textwrap

    rows = math.ceil(len(images) / columns)
    figure = Figure(figsize=(3.4 * min(len(images), columns), 4.6 * rows))
    for index, (image, lines) in enumerate(zip(images, titles)):
        ax = figure.add_subplot(rows, min(len(images), columns), index + 1)
        ax.imshow(image)
        ax.axis("off")
        top = -0.03
        for number, line in enumerate(lines):
            wrapped = textwrap.wrap(line, 36)
            ax.text(
                0.0,
                top,
                "\n".join(wrapped),
                transform=ax.transAxes,
                va="top",
                ha="left",
                fontsize=8.5,
                fontweight="bold" if number == 0 else "normal",
                color="black" if number == 0 else "dimgray",
            )
            top -= 0.055 * len(wrapped) + 0.03
    figure.subplots_adjust(hspace=0.95, wspace=0.08)
    _save(figure, path)
