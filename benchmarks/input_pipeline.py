"""The input pipeline alone: decoded-and-cropped images per second of the loader, no model.

  one_crop_w0 / w1 / w2   decode, one RandomResizedCrop, with 0, 1 and 2 loader workers
  k_crops_w0              decode once, cut k crops (replay's path): images/s and crops/s
  pil_decode              PIL's JPEG decode (full size) alone
  draft_decode            PIL with ``Image.draft``: the JPEG decoder's DCT scaling to the
                          smallest size >= what the crop needs (here: half the image side)
  tv_decode_jpeg          ``torchvision.io.decode_jpeg`` on the file's bytes

Written to ``results/benchmarks/input_pipeline.json`` with the ratios against one_crop_w0.

    python benchmarks/input_pipeline.py [--images 64 --image-size 500x375 --size 112 --crops 4]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np

from common import RESULTS, machine, make_images, measure, ratio, write_report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--image-size", default="500x375")
    p.add_argument("--size", type=int, default=112, help="crop output size")
    p.add_argument("--crops", type=int, default=4, help="k: crops per decode")
    p.add_argument("--batch", type=int, default=16, help="images per loader batch")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--window-steps", type=int, default=4)
    p.add_argument("--out", default=str(RESULTS / "input_pipeline.json"))
    return p.parse_args(argv)


class Crops:
    """Item i: image i decoded once, ``k`` RandomResizedCrop crops cut from it (kdflow's code)."""

    def __init__(self, images, k: int, size: int):
        self.images, self.k, self.size = images, k, size

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from kdflow.data.multicrop import cut_crops, sample_crops

        image = self.images.load(i)
        return cut_crops(image, sample_crops(i, image.width, image.height, self.k), self.size, "bilinear")


def main(argv=None):
    import torch
    from PIL import Image
    from torchvision.io import decode_jpeg

    from kdflow.data.imagefolder import ManifestDataset

    args = parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="kdflow-input-") as tmp:
        manifest = make_images(Path(tmp), args.images, args.image_size)
        images = ManifestDataset(manifest)
        files = [manifest.root / s.path for s in manifest.samples]

        def loader_mode(k, workers):
            loader = torch.utils.data.DataLoader(Crops(images, k, args.size), batch_size=args.batch, shuffle=True,
                                                 num_workers=workers, persistent_workers=workers > 0)
            batches = itertools.chain.from_iterable(itertools.repeat(loader))
            return measure(lambda b: {"images": len(b), "crops": b.shape[0] * b.shape[1]}, batches,
                           args.warmup, args.windows, args.window_steps)

        def decode_mode(decode):
            paths = itertools.cycle(files)
            return measure(lambda _: (decode(next(paths)), {"images": 1})[1], itertools.repeat(None),
                           args.warmup * 4, args.windows, args.window_steps * 4)

        def pil(path):
            with Image.open(path) as im:
                return im.convert("RGB")

        def drafted(path):
            with Image.open(path) as im:
                im.draft("RGB", (im.width // 2, im.height // 2))
                return im.convert("RGB")

        def tv(path):
            return decode_jpeg(torch.from_numpy(np.fromfile(path, dtype=np.uint8)))

        for workers in (0, 1, 2):
            print(f"timing one crop per decode, {workers} workers ...", flush=True)
            results[f"one_crop_w{workers}"] = loader_mode(1, workers)
        print(f"timing {args.crops} crops per decode ...", flush=True)
        results["k_crops_w0"] = loader_mode(args.crops, 0)
        for name, fn in (("pil_decode", pil), ("draft_decode", drafted), ("tv_decode_jpeg", tv)):
            print(f"timing {name} ...", flush=True)
            results[name] = decode_mode(fn)
    base = results["one_crop_w0"]["images"]["median"]
    ratios = {f"{m}_images_over_one_crop_w0": ratio(r["images"]["median"], base)
              for m, r in results.items() if m.startswith(("one_crop_w1", "one_crop_w2", "k_crops"))}
    ratios["k_crops_crops_over_one_crop_w0"] = ratio(results["k_crops_w0"]["crops"]["median"], base)
    ratios["draft_over_pil_decode"] = ratio(results["draft_decode"]["images"]["median"],
                                            results["pil_decode"]["images"]["median"])
    ratios["tv_decode_jpeg_over_pil_decode"] = ratio(results["tv_decode_jpeg"]["images"]["median"],
                                                     results["pil_decode"]["images"]["median"])
    report = {"benchmark": "input_pipeline", "machine": machine(), "settings": vars(args), "modes": results,
              "ratios": ratios}
    write_report(args.out, report)
    print(ratios, flush=True)
    return report


if __name__ == "__main__":
    main()
