"""Input-pipeline throughput: t2i (cached, pre-resized images) vs the originals' per-step JPEG pipeline.

CUB-like setting: 500x375 JPEGs, bird pipeline (bbox crop, resize shorter side to 304, random 256 crop,
flip, 64/128/256 pyramid, [-1, 1]), batch 10, DataLoader with 0 and 2 workers. The "original" pipeline below is
the AttnGAN / DM-GAN datasets.py and main.py transforms, re-written with torchvision (decode + resize every image
on every step).
Also: shapes generation rate at 64 px. Every number is the median of ``--repeats`` runs; the load average is printed
(other jobs on the machine lower every rate; compare ratios measured side by side).

    .venv/bin/python benchmarks/data_pipeline.py [--images 300] [--epochs 2] [--shapes 4000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i.data.transforms import bbox_crop_box


def make_jpegs(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    images = root / "CUB_200_2011" / "images" / "001.Bench"
    images.mkdir(parents=True)
    (root / "text" / "001.Bench").mkdir(parents=True)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    keys, boxes = [], []
    for i in range(n):
        # smooth photo-like content plus noise, so JPEG decode cost is realistic
        a, b, c = rng.uniform(0.005, 0.05, size=3)
        base = np.stack([np.sin(a * xx + i), np.cos(b * yy), np.sin(c * (xx + yy))], axis=-1) * 90 + 128
        image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        key = f"001.Bench/img_{i:05d}"
        Image.fromarray(image).save(root / "CUB_200_2011" / "images" / f"{key}.jpg", quality=90)
        (root / "text" / f"{key}.txt").write_text("a bird with red wings and a short beak\n" * 10)
        keys.append(key)
        w, h = rng.uniform(120, 300), rng.uniform(100, 250)
        boxes.append((rng.uniform(0, 500 - w), rng.uniform(0, 375 - h), w, h))
    (root / "CUB_200_2011" / "images.txt").write_text("".join(f"{i + 1} {k}.jpg\n" for i, k in enumerate(keys)))
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text(
        "".join(f"{i + 1} {x:.1f} {y:.1f} {w:.1f} {h:.1f}\n" for i, (x, y, w, h) in enumerate(boxes))
    )
    (root / "train").mkdir()
    (root / "train" / "filenames.pickle").write_bytes(pickle.dumps(keys, protocol=2))


class OriginalPipeline(torch.utils.data.Dataset):
    """Per step: decode JPEG, bbox crop, Resize(304), RandomCrop(256), flip, pyramid, normalise, as the originals do."""

    def __init__(self, root: Path, dataset) -> None:
        from torchvision import transforms

        self.files = dataset.files
        self.bboxes = dataset._bboxes
        self.captions = [c[0] for c in dataset._captions]
        self.transform = transforms.Compose(
            [transforms.Resize(int(256 * 76 / 64)), transforms.RandomCrop(256), transforms.RandomHorizontalFlip()]
        )
        self.norm = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
        self.scales = [transforms.Resize(64), transforms.Resize(128)]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        image = Image.open(self.files[i]).convert("RGB")
        image = image.crop(bbox_crop_box(self.bboxes[i], *image.size))
        image = self.transform(image)
        pyramid = [self.norm(scale(image)) for scale in self.scales] + [self.norm(image)]
        caption = np.zeros(18, dtype=np.int64)
        caption[: len(self.captions[i])] = self.captions[i][:18]
        return pyramid, torch.from_numpy(caption), len(self.captions[i]), 0, str(i)


def original_collate(items):
    batch = torch.utils.data.default_collate(items)
    order = torch.argsort(batch[2], descending=True)
    return [im[order] for im in batch[0]], batch[1][order], batch[2][order]


def throughput(dataset, collate, workers: int, epochs: int) -> float:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=10, shuffle=True, drop_last=True, num_workers=workers, collate_fn=collate,
        persistent_workers=workers > 0,
    )  # fmt: skip
    next(iter(loader))  # start workers
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            count += len(batch[1]) if isinstance(batch, list) else len(batch)
    return count / (time.perf_counter() - start)


def shapes_rates(n: int, repeats: int) -> tuple[float, float, float]:
    """Shapes at 64 px (medians): in-memory draw + PNG encode, make_shapes to disk with 1 and 2 workers."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from shapes_generation import measure  # the shapes benchmark itself; this script only summarises it

    memory, rates, _ = measure(n, repeats, Path(tempfile.gettempdir()))
    return float(np.median(memory)), float(np.median(rates[1])), float(np.median(rates[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--shapes", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; medians are printed")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    torch.set_num_threads(1)
    from t2i.registry import get_registry

    tmp = Path(tempfile.mkdtemp(prefix="t2i-bench-data-"))
    try:
        make_jpegs(tmp, args.images)
        params = {"root": str(tmp), "captions_per_image": 10}
        reg = get_registry("dataset")
        plain = reg.build("cub", {**params, "cache": False}, split="train", image_sizes=[64, 128, 256])
        start = time.perf_counter()
        cached = reg.build("cub", params, split="train", image_sizes=[64, 128, 256])
        build = time.perf_counter() - start
        cache_bytes = cached._cache.nbytes
        original = OriginalPipeline(tmp, plain)
        rows = []
        for workers in (0, 2):
            pairs = [
                (throughput(original, original_collate, workers, args.epochs),
                 throughput(cached, cached.collate, workers, args.epochs))
                for _ in range(args.repeats)
            ]  # fmt: skip
            o, t = (float(np.median(v)) for v in zip(*pairs, strict=True))
            rows.append((workers, o, t, float(np.median([b / a for a, b in pairs]))))
        print(f"{args.images} JPEGs 500x375, bird pipeline, pyramid 64/128/256, batch 10, {os.cpu_count()} CPUs")
        print(f"{'workers':>8} {'original img/s':>15} {'t2i cached img/s':>17} {'speed-up':>9}")
        for workers, o, t, ratio in rows:
            print(f"{workers:>8} {o:>15.0f} {t:>17.0f} {ratio:>8.1f}x   (medians of {args.repeats})")
        print(
            f"cache: built once in {build:.1f} s ({args.images / build:.0f} img/s), "
            f"{cache_bytes / 1e6:.1f} MB on disk ({cache_bytes / args.images / 1e3:.0f} kB per image)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    memory, disk1, disk2 = shapes_rates(args.shapes, args.repeats)
    print(
        f"shapes 64 px, {args.shapes} images: {memory:,.0f} img/s draw + PNG encode in memory (one process); "
        f"make_shapes to disk (CUB layout, 2 files per image): {disk1:,.0f} img/s with 1 worker, "
        f"{disk2:,.0f} img/s with 2 (medians of {args.repeats})"
    )
    print(f"load average at end: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
