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
import pickle
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.tables import print_table  # noqa: E402
from speedrun_diffusion.callbacks.checkpointing import atomic_torch_save  # noqa: E402
from speedrun_diffusion.datamodules.shape_classifier import (  # noqa: E402
    ShapeClassifier, render_dataset, shape_accuracy, train_shape_classifier,
)
from speedrun_diffusion.datamodules.synthetic import SyntheticImages  # noqa: E402
from speedrun_diffusion.lightning_modules.weights import (  # noqa: E402
    network_weights, read_checkpoint, safe_torch_load,
)


def known_recipes() -> dict[str, type]:
    """The names a checkpoint may give its recipe → the recipe classes this benchmark samples: ``module.Class``
    where defined, the package face (``speedrun_diffusion.lightning_modules.SiT``) and the names before the
    ``speedrun_diffusion`` namespace. A checkpoint's name is only looked up here — never imported, never called
    with the checkpoint's arguments."""
    from speedrun_diffusion.lightning_modules import RAEStage2, SiD2, SiT, SpeedDiff, SRDiT

    names = {}
    for cls in (SiT, SiD2, SRDiT, RAEStage2, SpeedDiff):
        for name in (cls.recipe_name(), f"speedrun_diffusion.lightning_modules.{cls.__name__}"):
            names[name] = names[name.removeprefix("speedrun_diffusion.")] = cls
    return names


def load_recipe(path: str, use_ema: bool = True):
    """The recipe that wrote a Lightning checkpoint, with its weights (the EMA shadow for ``net`` if present)."""
    checkpoint = read_checkpoint(path)
    name = checkpoint.get("recipe") or (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    recipes = known_recipes()
    if name not in recipes:
        known = sorted({cls.recipe_name() for cls in recipes.values()})
        raise ValueError(f"{path} names recipe {name!r}, not one this benchmark samples: {known}")
    cls = recipes[name]
    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    recipe = cls(**hparams)
    recipe.load_state_dict(checkpoint["state_dict"])
    weights, used_ema = network_weights(checkpoint, "net.", use_ema, source=path)  # raw weights if no EMA ran
    recipe.net.load_state_dict(weights)
    return recipe.eval(), used_ema, checkpoint.get("global_step")


def classifier_for(resolution: int, cache: Path) -> ShapeClassifier:
    """The cached classifier for ``resolution``, trained and saved on first use — and again when the cache cannot
    be read (a save cut short by a kill, a foreign file): it is written atomically (a temporary file beside it,
    then a rename), so a concurrent run reads the old cache or the new one, never half of one."""
    if cache.is_file():
        model = ShapeClassifier()
        try:
            model.load_state_dict(safe_torch_load(cache))
            return model.eval()
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError) as error:
            print(f"classifier cache {cache} is unreadable ({type(error).__name__}: {error}); rebuilding it",
                  file=sys.stderr)
    model = train_shape_classifier(resolution)
    atomic_torch_save(model.state_dict(), cache)
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
