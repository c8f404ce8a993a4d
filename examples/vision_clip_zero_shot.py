"""Zero-shot classification with a pretrained CLIP under quarter turns and mirror images (the paper's setting).

With Hub access (real weights and a `datasets` image set):

    python examples/vision_clip_zero_shot.py --model openai/clip-vit-base-patch32 --dataset uoft-cs/cifar10 \\
        --split test --samples 2000

A SigLIP checkpoint (`--model google/siglip-base-patch16-224`) runs the same way; its prompts are padded to
64 tokens, as SigLIP was trained.

Offline, on local folders (a saved CLIP checkpoint with its tokenizer and image processor, and an image folder
with one sub-folder per class):

    python examples/vision_clip_zero_shot.py --model ./my-clip --dataset imagefolder --data-dir ./images

Every image is evaluated upright and moved by a random element of rotation x flip (the dihedral group of
order 8), with the plain model and through `make_equivariant(model, ["rot90", "hflip"], symmetrization=...)`
for each method; the prompts are "a photo of a {label}.". Prints a markdown table: accuracy, inner rows per
image, seconds.
"""

from __future__ import annotations

import argparse
import time

import torch
from datasets import load_dataset
from transformers import AutoImageProcessor, AutoModelForZeroShotImageClassification, AutoTokenizer

from hf_equivariant import make_equivariant

METHODS = ("plain", "equitune", "multi_equitune", "equizero", "multi_equizero", "canonicalize")


def random_elements(pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image rotated by a random multiple of 90 degrees, then mirrored with probability 1/2."""
    rotations = torch.randint(4, (len(pixel_values),), generator=generator).tolist()
    flips = torch.randint(2, (len(pixel_values),), generator=generator).tolist()
    moved = [torch.rot90(x, r, dims=(-2, -1)) for x, r in zip(pixel_values, rotations)]
    return torch.stack([x.flip(-1) if f else x for x, f in zip(moved, flips)])


def load_images(args):
    """(list of PIL images, labels, class names)."""
    if args.dataset == "imagefolder":
        data = load_dataset("imagefolder", data_dir=args.data_dir, split=args.split)
    else:
        data = load_dataset(args.dataset, split=args.split)
    if args.samples:
        data = data.shuffle(seed=0).select(range(min(args.samples, len(data))))
    image_column = next(name for name, feature in data.features.items() if type(feature).__name__ == "Image")
    label_column = next(name for name, feature in data.features.items() if type(feature).__name__ == "ClassLabel")
    names = data.features[label_column].names
    return [image.convert("RGB") for image in data[image_column]], torch.tensor(data[label_column]), names


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="openai/clip-vit-base-patch32")
    parser.add_argument("--dataset", default="uoft-cs/cifar10", help="a Hub dataset, or 'imagefolder' with --data-dir")
    parser.add_argument("--data-dir")
    parser.add_argument("--split", default="test")
    parser.add_argument("--samples", type=int, default=2000, help="0: the whole split")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--template", default="a photo of a {}.")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args(argv)

    model = AutoModelForZeroShotImageClassification.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    image_processor = AutoImageProcessor.from_pretrained(args.model)
    images, labels, names = load_images(args)
    padding = dict(padding="max_length", max_length=64) if model.config.model_type == "siglip" else dict(padding=True)
    prompts = tokenizer([args.template.format(name) for name in names], return_tensors="pt", **padding)
    pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
    moved = random_elements(pixel_values, torch.Generator().manual_seed(0))

    rows = {"count": 0}
    model.vision_model.register_forward_pre_hook(
        lambda module, a, kw: rows.__setitem__("count", rows["count"] + (a[0] if a else kw["pixel_values"]).shape[0]),
        with_kwargs=True)
    lines = [f"{args.model} on {args.dataset} ({args.split}, {len(labels)} images, {len(names)} classes)", "",
             "| method | rows/image | upright | moved | seconds |", "|---|---|---|---|---|"]
    for method in args.methods:
        wrapped = model if method == "plain" else make_equivariant(model, ["rot90", "hflip"], symmetrization=method)
        accuracy, rows["count"], start = {}, 0, time.perf_counter()
        with torch.no_grad():
            for name, x in (("upright", pixel_values), ("moved", moved)):
                predictions = torch.cat([wrapped(**prompts, pixel_values=batch).logits_per_image.argmax(-1)
                                         for batch in x.split(args.batch_size)])
                accuracy[name] = 100 * (predictions == labels).float().mean().item()
        lines.append(f"| {method} | {rows['count'] / (2 * len(labels)):.2f} | {accuracy['upright']:.2f} | "
                     f"{accuracy['moved']:.2f} | {time.perf_counter() - start:.1f} |")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
