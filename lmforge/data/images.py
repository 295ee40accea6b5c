"""Images with labels and texts, for image-and-text fine-tuning.

Three ways in, all generic:

- a table (CSV/TSV/JSONL/JSON) with an `image` column holding PNG/JPEG paths relative to the
  table's folder, a `label` column and, for captioning and retrieval, a `text` column;
- a folder with one sub-folder of images per class (`train/7/001.png`), the label being the
  sub-folder's name (the layout of torchvision's ImageFolder);
- a NumPy `.npz` file with arrays `images` ((N, H, W), (N, H, W, C) or (N, C, H, W)), `labels`
  and optionally `texts` (read with allow_pickle=False: strings must be a unicode array).

Pixels become floats in [-1, 1] ((x / max - 0.5) / 0.5, max 255 for 8-bit files), shape (C, H, W).

`export_digits` writes scikit-learn's 8x8 handwritten digits (1,797 real images) as such a
folder, with captions built from the labels ("a handwritten digit seven").
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lmforge.data.tasks import read_rows
from lmforge.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class ImageRecord:
    pixels: Tensor  # (C, H, W) float in [-1, 1]
    label: str | None
    text: str | None


def _normalise(array: np.ndarray, top: float) -> Tensor:
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)) / top
    return (x - 0.5) / 0.5


def _read_image(path: Path, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            array = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist; fix the path in the table.") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path} ({e}); is it a PNG or JPEG file?") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)


def _from_table(path: Path, split: str, channels: int) -> list[ImageRecord]:
    rows = read_rows(path, split)
    if not rows:
        raise DataError(f"the {split} file {path} has no rows; add examples.")
    if "image" not in rows[0]:
        raise DataError(
            f"the {split} file {path} has no 'image' column; give each row an image path "
            f"(columns found: {', '.join(rows[0])})."
        )
    out = []
    for row in rows:
        image = path.parent / str(row["image"])
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{image} is not an image file ({', '.join(IMAGE_SUFFIXES)}).")
        pixels = _normalise(_read_image(image, channels), 255.0)
        label, text = row.get("label"), row.get("text")
        out.append(ImageRecord(pixels, None if label is None else str(label), text))
    return out


def _from_folder(path: Path, split: str, channels: int) -> list[ImageRecord]:
    classes = sorted(d for d in path.iterdir() if d.is_dir())
    if not classes:
        raise DataError(
            f"the {split} folder {path} has no class sub-folders; put each class's images in a "
            "folder named after the label, or pass a table (.csv/.jsonl) or .npz file."
        )
    out = []
    for folder in classes:
        for image in sorted(folder.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                pixels = _normalise(_read_image(image, channels), 255.0)
                out.append(ImageRecord(pixels, folder.name, None))
    return out


def _from_npz(path: Path, split: str) -> list[ImageRecord]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path} as a NumPy .npz file ({e}).") from None
    if "images" not in arrays:
        raise DataError(f"the {split} file {path} has no 'images' array.")
    images = arrays["images"]
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    elif images.ndim != 4:
        raise DataError(f"'images' in {path} must be (N, H, W) or (N, H, W, C) or (N, C, H, W).")
    top = 255.0 if images.dtype == np.uint8 else max(float(images.max()), 1e-8)
    labels = arrays.get("labels")
    texts = arrays.get("texts")
    for name, arr in (("labels", labels), ("texts", texts)):
        if arr is not None and len(arr) != len(images):
            raise DataError(f"'{name}' in {path} has {len(arr)} entries for {len(images)} images.")
    return [
        ImageRecord(
            _normalise(images[i], top),
            None if labels is None else str(labels[i]),
            None if texts is None else str(texts[i]),
        )
        for i in range(len(images))
    ]


def read_images(path: str | Path, split: str = "training", channels: int = 1) -> list[ImageRecord]:
    """Records from a table of image paths, a folder of class folders or an .npz of arrays (see
    the module docstring)."""
    path = Path(path)
    if path.is_dir():
        records = _from_folder(path, split, channels)
    elif not path.is_file():
        raise DataError(
            f"the {split} data {path} does not exist; pass a .csv/.jsonl table, an .npz file or "
            "a folder of class sub-folders."
        )
    elif path.suffix.lower() == ".npz":
        records = _from_npz(path, split)
    else:
        records = _from_table(path, split, channels)
    if not records:
        raise DataError(f"the {split} file {path} has no images.")
    shape = tuple(records[0].pixels.shape)
    for r in records:
        if tuple(r.pixels.shape) != shape:
            raise DataError(
                f"the images of {path} differ in shape ({shape} and {tuple(r.pixels.shape)}); "
                "resize them to one square size."
            )
    if shape[1] != shape[2]:
        raise DataError(f"the images of {path} are {shape[1]}x{shape[2]}; give square images.")
    return records


def digit_caption(label: int) -> str:
    """The caption a digits image gets from its label: 'a handwritten digit seven'."""
    return f"a handwritten digit {DIGIT_WORDS[label]}"


def export_digits(out_dir: str | Path, seed: int = 0, fractions=(0.7, 0.15)) -> dict[str, int]:
    """Write scikit-learn's 8x8 digits as PNGs + train/valid/test CSVs (image, label, text).

    Pixels 0..16 become 8-bit grey levels round(x * 255 / 16). The split is a seeded shuffle:
    70% / 15% / 15% by default. Returns the row count of each split.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "the digits data ship with scikit-learn; install it with `pip install scikit-learn`."
        ) from None
    from PIL import Image

    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    images = np.rint(digits.images * 255.0 / 16.0).astype(np.uint8)  # (1797, 8, 8)
    order = np.random.default_rng(seed).permutation(len(images))
    n_train = round(fractions[0] * len(images))
    n_valid = round(fractions[1] * len(images))
    splits = {
        "train": order[:n_train],
        "valid": order[n_train : n_train + n_valid],
        "test": order[n_train + n_valid :],
    }
    for i, image in enumerate(images):
        Image.fromarray(image, mode="L").save(out_dir / "images" / f"{i:04d}.png")
    counts = {}
    for name, idx in splits.items():
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image", "label", "text"])
        for i in sorted(idx.tolist()):
            label = int(digits.target[i])
            writer.writerow([f"images/{i:04d}.png", label, digit_caption(label)])
        (out_dir / f"{name}.csv").write_text(buf.getvalue(), encoding="utf-8")
        counts[name] = len(idx)
    (out_dir / "README.md").write_text(DIGITS_README, encoding="utf-8")
    return counts


DIGITS_README = """# Handwritten digits (8x8), as images with labels and captions

Source: scikit-learn's `sklearn.datasets.load_digits`, its bundled copy of the test set of the
UCI "Optical Recognition of Handwritten Digits" data (E. Alpaydin, C. Kaynak, 1998; UCI Machine
Learning Repository, licence CC BY 4.0). 1,797 real 8x8 images written by 43 people, grey levels
0..16, stored here as 8-bit PNGs (x * 255 / 16).

The `text` column is built from the label ("a handwritten digit seven"); it is not a human
caption. Splits: a seeded shuffle, 70% train, 15% valid, 15% test.
"""


# --------------------------------------------------------------------------- batches
IGNORE = -100  # label value the caption loss skips (as lmforge.objectives.IGNORE)


def image_features(
    task: str,
    records: list[ImageRecord],
    tokenizer,
    label_ids: dict[str, int],
    prompt: str,
    text_ids: dict[str, int] | None = None,
) -> list[dict]:
    """One feature dict per record for `collate_images`.

    classify: the prompt's tokens and the label id; retrieve: the text's tokens and its group
    (the index of the text among the distinct texts); caption: prompt + " " + text + EOS, with
    labels on the caption tokens only.
    """
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=True)
    out = []
    for r in records:
        f: dict = {"pixels": r.pixels}
        if task == "classify":
            f["input_ids"], f["label"] = prompt_ids, label_ids[r.label]
        elif task == "retrieve":
            f["input_ids"] = tokenizer.encode(r.text, add_special_tokens=True)
            f["group"] = text_ids[r.text]
        else:
            caption = tokenizer.encode(" " + r.text) + [tokenizer.eos_id]
            f["input_ids"] = prompt_ids + caption
            f["labels"] = [IGNORE] * len(prompt_ids) + caption
        out.append(f)
    return out


def collate_images(features: list[dict], pad_id: int) -> dict[str, Tensor]:
    """Right-padded input_ids + attention_mask, stacked pixel_values, and the task's targets."""
    t = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), t), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        mask[i, :n] = 1
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": torch.stack([f["pixels"] for f in features]),
    }
    if "label" in features[0]:
        batch["labels"] = torch.tensor([f["label"] for f in features])
    if "group" in features[0]:
        batch["groups"] = torch.tensor([f["group"] for f in features])
    if "labels" in features[0]:
        labels = torch.full((len(features), t), IGNORE, dtype=torch.long)
        for i, f in enumerate(features):
            labels[i, : len(f["labels"])] = torch.tensor(f["labels"])
        batch["labels"] = labels
    return batch
