"""deeplab-demo: palette, overlays with a legend, image / folder / stream inputs, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deeplab_caffe.models import build_model, default_config, save_checkpoint
from deeplab_caffe.parity.commands.demo import Predictor, class_index_mask, main, process_stream
from deeplab_caffe.parity.viz import add_legend, colorize, overlay, voc_palette


def test_voc_palette_is_the_standard_colour_map() -> None:
    palette = voc_palette(21)
    assert palette.dtype == np.uint8 and palette.shape == (21, 3)
    assert palette[:8].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                                    [0, 0, 128], [128, 0, 128], [0, 128, 128], [128, 128, 128]]
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[20].tolist() == [0, 64, 128]  # tvmonitor
    assert voc_palette(256)[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in voc_palette(182)}) == 182  # distinct for COCO-Stuff


def test_colorize_and_overlay() -> None:
    palette = voc_palette(3)
    label = np.array([[0, 1], [2, 255]])
    assert colorize(label, palette).tolist() == [[[0, 0, 0], [128, 0, 0]], [[0, 128, 0], [0, 0, 0]]]
    image = np.full((2, 2, 3), 100, np.uint8)
    out = overlay(image, label, palette, alpha=0.5)
    assert out[0, 1].tolist() == [50, 50, 114]  # BGR: half grey, half (0, 0, 128)
    assert out[1, 1].tolist() == [100, 100, 100]  # ignore keeps the image
    with_legend = add_legend(out, [0, 1], ["background", "circle"], palette)
    assert with_legend.shape[0] >= 2 and with_legend.shape[1] > 2
    assert (with_legend[:2, :2] == out).all()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = default_config(4, n_blocks=(1, 1, 1, 1), aspp_rates=(1, 2), stem_channels=8)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_checkpoint(path, build_model(config), config,
                    {"class_names": ["background", "circle", "rectangle", "triangle"]})
    return path


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data as skimage_data
    rgb = skimage_data.astronaut()  # 512 x 512 RGB
    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))  # RGB -> BGR
    return path


def test_demo_writes_an_overlay_png_for_a_photo(tmp_path: Path, tiny_checkpoint: Path,
                                                astronaut_png: Path) -> None:
    result = CliRunner().invoke(main, ["--checkpoint", str(tiny_checkpoint), "--image",
                                       str(astronaut_png), "--output", str(tmp_path / "out"),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "out" / "astronaut.png_overlay.png"
    mask_path = tmp_path / "out" / "astronaut.png_mask.png"
    assert result.stdout.splitlines() == [str(written), str(mask_path)]
    image = cv2.imread(str(written))
    assert image is not None
    assert image.shape[0] == 512 and image.shape[1] > 512  # the photo plus the legend column


def test_demo_mask_is_the_class_index_of_each_pixel(tmp_path: Path, tiny_checkpoint: Path,
                                                    astronaut_png: Path) -> None:
    result = CliRunner().invoke(main, ["--checkpoint", str(tiny_checkpoint), "--image",
                                       str(astronaut_png), "--output", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    mask = cv2.imread(str(tmp_path / "astronaut.png_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.dtype == np.uint8 and mask.shape == (512, 512)  # one channel, the photo's size
    expected = Predictor(tiny_checkpoint, device="cpu").predict(cv2.imread(str(astronaut_png)))
    assert (mask == expected).all()


def test_class_index_mask_widens_beyond_256_classes() -> None:
    assert class_index_mask(np.array([[0, 255]])).dtype == np.uint8
    wide = class_index_mask(np.array([[0, 300]]))
    assert wide.dtype == np.uint16 and wide.tolist() == [[0, 300]]


def test_predictor_labels_have_the_input_size(tiny_checkpoint: Path, astronaut_png: Path) -> None:
    predictor = Predictor(tiny_checkpoint, device="cpu", max_side=200)
    image = cv2.imread(str(astronaut_png))
    label = predictor.predict(image)
    assert label.shape == (512, 512) and label.dtype == np.int64
    assert label.min() >= 0 and label.max() < 4
    assert predictor.class_names == ["background", "circle", "rectangle", "triangle"]


def test_demo_folder_writes_an_overlay_and_a_mask_per_image(tmp_path: Path, tiny_checkpoint: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "a.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    result = CliRunner().invoke(main, ["--checkpoint", str(tiny_checkpoint), "--folder", str(folder),
                                       "--output", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a.jpg_mask.png", "a.jpg_overlay.png", "a.png_mask.png", "a.png_overlay.png"]


class FakeCapture:
    """An OpenCV-like capture that yields ``n`` frames."""

    def __init__(self, n: int) -> None:
        self.frames = [np.full((32, 48, 3), 40 * i, np.uint8) for i in range(n)]
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def release(self) -> None:
        self.released = True


@pytest.mark.parametrize(("n_frames", "max_frames", "expected"), [(5, 3, 3), (2, None, 2)])
def test_stream_stops_at_max_frames_or_the_end(tmp_path: Path, tiny_checkpoint: Path, n_frames: int,
                                               max_frames: int | None, expected: int) -> None:
    capture = FakeCapture(n_frames)
    n = process_stream(capture, Predictor(tiny_checkpoint, device="cpu"), tmp_path, max_frames=max_frames)
    assert n == expected and capture.released
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"frame_{i:06d}_{kind}.png" for i in range(expected) for kind in ("mask", "overlay"))


@pytest.mark.parametrize(("args", "message"), [
    (["--image", "{tmp}/missing.jpg"], "error: {tmp}/missing.jpg: image not found"),
    (["--image", "{tmp}/garbage.jpg"], "error: {tmp}/garbage.jpg: cannot decode image"),
    (["--folder", "{tmp}/empty"], "error: {tmp}/empty: no images"),
    ([], "error: give exactly one of --image, --folder, --webcam"),
    (["--image", "{tmp}/garbage.jpg", "--webcam", "0"], "error: give exactly one of"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, tiny_checkpoint: Path, args: list[str],
                                          message: str) -> None:
    (tmp_path / "garbage.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path) for a in args]
    result = CliRunner().invoke(main, ["--checkpoint", str(tiny_checkpoint), *args,
                                       "--output", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 2
    assert result.stderr.startswith(message.format(tmp=tmp_path)), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unloadable_checkpoint_is_one_line_and_exit_2(tmp_path: Path, astronaut_png: Path) -> None:
    (tmp_path / "bad.pth").write_bytes(b"nope")
    result = CliRunner().invoke(main, ["--checkpoint", str(tmp_path / "bad.pth"), "--image",
                                       str(astronaut_png), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'bad.pth'}: not a readable PyTorch checkpoint")
    assert len(result.stderr.strip().splitlines()) == 1
