"""Cost of drawing glyph instances: the data set's warp against a plain reference written with torch's ops.

Both paths distort the same prototypes with the same random parameters: a stroke-width change (a blend
towards a 3 x 3 grey-level dilation or erosion), a [1, 2, 1] / 4 antialiasing blur, and bilinear
sampling on an affinely transformed grid at half the prototype resolution. The reference uses
``F.max_pool2d``, ``F.conv2d`` and ``F.affine_grid``; ``mtml_lib.data.glyphs.warp`` uses shifted slices,
in-place blends and an elementwise grid. Before timing, the two outputs are compared (largest absolute
difference, images in [0, 1]); a path that disagrees is not timed.

Timing: ``--repeats`` rounds, each timing both paths in turn on ``--batch`` images (so that load from
other processes hits both alike); the table gives the median microseconds per image and the ratio, and
the end-to-end cost of ``make_instances`` (warp plus conversion to bytes) on one split.

Run: ``.venv/bin/python benchmarks/bench_glyphs.py`` (``--help`` for options). Exits non-zero when the
outputs differ by more than ``--atol`` or the warp is slower than the reference.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import interleaved_median  # noqa: E402
from mtml_lib.data import glyphs as G  # noqa: E402


def reference_warp(prototypes: torch.Tensor, params: dict[str, torch.Tensor], supersample: int) -> torch.Tensor:
    """The same distortion as ``glyphs.warp``, from torch's stock operators."""
    x = prototypes.float().unsqueeze(1) / 255.0
    steps = (params["stroke"].float() * (supersample / 2.0)).view(-1, 1, 1, 1)
    dilated = F.max_pool2d(x, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
    x = torch.where(steps > 0, x + steps * (dilated - x), x - steps * (eroded - x))
    if supersample > 1:
        k = torch.tensor([1.0, 2.0, 1.0]) / 4
        x = F.conv2d(x, (k[:, None] * k[None])[None, None], padding=1)
    size = x.shape[-1] // supersample
    grid = F.affine_grid(G._sampling_grids(params), [len(x), 1, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0.0, 1.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512, help="images per timed call (make_instances warps 512 at a time)")
    parser.add_argument("--repeats", type=int, default=7, help="rounds (the median is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--split", default="test", help="split drawn end to end by make_instances")
    parser.add_argument("--atol", type=float, default=1e-5)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    protos = G.load_prototypes()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(protos.images), (args.batch,), generator=g)
    params = G.sample_distortions(args.batch, g)
    images = protos.images[idx]
    s = protos.settings.supersample

    diff = float((G.warp(images, params, s) - reference_warp(images, params, s)).abs().max())
    print(f"largest difference between the warp and the reference: {diff:.2e} (images in [0, 1])")
    if diff > args.atol:
        print(f"FAIL: the outputs differ by more than {args.atol}")
        return 1

    paths = {"glyphs.warp": lambda: G.warp(images, params, s), "reference (stock ops)": lambda: reference_warp(images, params, s)}
    per_image = {name: 1e6 * t / args.batch for name, t in interleaved_median(paths, args.repeats).items()}

    classes = protos.classes_of(args.split)
    n_images = len(classes) * 20
    end_to_end = interleaved_median({"make_instances": lambda: G.make_instances(protos, classes, 20, seed=1)},
                                    max(1, args.repeats // 3))["make_instances"]

    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{args.batch} images of {images.shape[-1]} x {images.shape[-1]} -> {images.shape[-1] // s} x {images.shape[-1] // s}\n")
    ref = per_image["reference (stock ops)"]
    print("| path | µs / image | vs reference |")
    print("|---|---:|---:|")
    for name, us in per_image.items():
        print(f"| {name} | {us:.1f} | {ref / us:.2f}x |")
    print(f"| make_instances, {args.split} split ({n_images} images, bytes out) | {1e6 * end_to_end / n_images:.1f} | |")
    if per_image["glyphs.warp"] > ref:
        print("FAIL: the warp is slower than the reference")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
