"""Shape accuracy of a checkpoint's class-conditional samples on the synthetic data (``datamodules/shape_classifier.py``).

Draws ``--per-class`` samples of every class with the recipe's own ``sample()`` (EMA weights when the checkpoint
has them, the recipe's default sampler settings unless ``--sample`` overrides them), and prints, per class and
overall, the fraction whose shape a classifier trained on the real images recognises. The classifier is
trained on first use (about 3 minutes on 2 CPU cores) and cached in ``--classifier``; its accuracy on held-out
real images is printed as the ceiling.

    python benchmarks/shape_accuracy.py runs/sid2_tiny_cpu/checkpoints/last.ckpt
    python benchmarks/shape_accuracy.py runs/sid2_tiny_cpu/checkpoints/last.ckpt --sample "num_steps=512" --markdown
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.tables import print_table  # noqa: E402
from speedrun_diffusion.datamodules.shape_classifier import (  # noqa: E402
    ShapeClassifier, render_dataset, shape_accuracy, train_shape_classifier,
)
from speedrun_diffusion.datamodules.synthetic import SyntheticImages  # noqa: E402
from speedrun_diffusion.lightning_modules.weights import network_weights, safe_torch_load  # noqa: E402


def load_recipe(path: str, use_ema: bool = True):
    """The recipe that wrote a Lightning checkpoint, with its weights (the EMA shadow for ``net`` if present)."""
    checkpoint = safe_torch_load(path)
    name = checkpoint.get("recipe")
    if not name or not str(name).startswith("speedrun_diffusion.lightning_modules."):
        raise ValueError(f"{path} names recipe {name!r}: not a checkpoint written by a speedrun-diffusion recipe")
    module_name, class_name = name.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    recipe = cls(**hparams)
    recipe.load_state_dict(checkpoint["state_dict"])
    weights, used_ema = network_weights(checkpoint, "net.", use_ema, source=path)  # raw weights if no EMA ran
    recipe.net.load_state_dict(weights)
    return recipe.eval(), used_ema, checkpoint.get("global_step")


def classifier_for(resolution: int, cache: Path) -> ShapeClassifier:
    """The cached classifier for ``resolution``, trained and saved on first use."""
    if cache.is_file():
        model = ShapeClassifier()
        model.load_state_dict(safe_torch_load(cache))
        return model.eval()
    model = train_shape_classifier(resolution)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--sample", default="", help='sample() overrides, e.g. "num_steps=512, guidance_scale=2.0"')
    parser.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA shadow")
    parser.add_argument("--classifier", default=None, help="cache file (default runs/shape_classifier_<res>.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    overrides = eval(f"dict({args.sample})", {"__builtins__": {}}, {"dict": dict})  # keyword literals only

    recipe, used_ema, step = load_recipe(args.checkpoint, use_ema=not args.raw)
    hp = recipe.hparams
    resolution, num_classes = int(hp.get("resolution") or hp["input_size"]), int(hp["num_classes"])
    cache = Path(args.classifier or ROOT / "runs" / f"shape_classifier_{resolution}.pt")
    classifier = classifier_for(resolution, cache)
    real_images, real_labels = render_dataset(2000, resolution, seed=0, split="val")
    ceiling, _ = shape_accuracy(classifier, real_images, real_labels)

    labels = torch.arange(num_classes).repeat(args.per_class)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        images = torch.cat([recipe.sample(chunk, generator=generator, **overrides).float()
                            for chunk in labels.split(100)])
    overall, per_class = shape_accuracy(classifier, images, labels)

    names = SyntheticImages(1, resolution, num_classes).class_names
    print(f"{args.checkpoint} (step {step}, {'EMA' if used_ema else 'raw'} weights, sampler {overrides or 'defaults'}); "
          f"{args.per_class} samples per class; classifier on 2,000 real validation images: {ceiling:.3f}")
    rows = [[k, names[k], f"{per_class[k]:.2f}"] for k in range(num_classes)] + [["", "all", f"{overall:.3f}"]]
    print_table(["class", "name", "shape accuracy"], rows, args.markdown)


if __name__ == "__main__":
    main()
