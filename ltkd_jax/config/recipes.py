"""The recipes the files under `configs/` are built from (docs/recipes.md): the CIFAR-LT
recipes (BKD's and mdistiller's), the ImageNet-style large-scale recipe, CBD's stage 2, a
user's image folder, and carrying a method onto another recipe (`with_method`). A method
brings its own part of the recipe (sampler, head, loss settings: its `methods.Spec`)."""

from __future__ import annotations

import ml_collections

from ltkd_jax import methods
from ltkd_jax.config.defaults import base_config, parse_arg, set_method
from ltkd_jax.methods.base import DEFAULTS_EPOCHS

# Recipes a CIFAR config can follow (the `recipe=` config argument).
RECIPES = ("bkd", "mdistiller")


def cifar_config(arg: str | None, method: str) -> ml_collections.ConfigDict:
    """A CIFAR-LT config for `method`, from the `file.py:k=v,...` argument.

    Arguments: dataset (cifar10 | cifar100), imb (imbalance factor), student and teacher
    (architectures, e.g. teacher=resnet32x4,student=resnet8x4 for the heterogeneous
    pairs), teacher_workdir (a finished teacher run; empty = train it first into
    WORKDIR/teacher), recipe (bkd = docs/recipes.md#bkd-cifar-recipe, the default, so every
    method is compared on one recipe; mdistiller = docs/recipes.md#mdistiller-cifar-recipe).
    The method's loss takes the values its official code uses for this recipe, dataset and
    pair (`methods.Spec.official_settings`).
    """
    args = parse_arg(
        arg,
        dataset="cifar100",
        imb=100.0,
        student="resnet32",
        teacher="resnet32",
        teacher_workdir="",
        recipe="bkd",
    )
    if args.recipe not in RECIPES:
        raise ValueError(f"recipe={args.recipe!r} is not known; choose one of {list(RECIPES)}")
    c = base_config(method)
    c.data.name = args.dataset
    c.data.imbalance_factor = args.imb
    c.model.name = args.student
    c.teacher.model = args.teacher
    c.teacher.workdir = args.teacher_workdir
    set_method(c, method, methods.Setting(args.recipe, args.dataset, args.teacher, args.student))
    if args.recipe == "mdistiller":
        # mdistiller: 240 epochs, batch 64, lr 0.05, x0.1 at 150/180/210, wd 5e-4.
        for section in (c, c.teacher):
            section.num_epochs = 240
        c.batch_size = 64
        c.optim.lr, c.optim.weight_decay = 0.05, 5e-4
        c.optim.warmup_epochs, c.optim.decay_epochs, c.optim.decay_factor = 0, (150, 180, 210), 0.1
        c.data.eval_groups = "tail33"  # LTKD's tables report the bottom 33% as "tail"
        # mdistiller/models/cifar/resnet.py: Kaiming-normal fan_out convs, PyTorch's Linear.
        c.model.weight_init = "mdistiller"
        if args.dataset == "cifar100":  # mdistiller/dataset/cifar100.py's Normalize
            c.data.norm_stats = "cifar100"
        # mdistiller reads no CIFAR-10: there the dataset's (LDAM-DRW) statistics stay.
    return c


# Per-benchmark defaults of configs/{ce,bkd,cbd}_large_scale.py (docs/recipes.md): the
# classifier-balancing backbones (stage 1), and CBD's official schedule and weight decay.
BENCHMARK_DEFAULTS = {
    "imagenet_lt": dict(model="resnext50_32x4d", epochs=90, cbd_epochs=90, cbd_weight_decay=5e-4),
    "inat2018": dict(model="resnet50", epochs=90, cbd_epochs=200, cbd_weight_decay=2e-4),
}


def benchmark_config(arg: str | None, method: str) -> ml_collections.ConfigDict:
    """A large-scale benchmark config from the `file.py:k=v,...` argument.

    Arguments: dataset (imagenet_lt | inat2018), model and epochs (0 = the benchmark's
    default, `BENCHMARK_DEFAULTS`); for CBD also teachers (1 = cbd, more = cbd_ensemble).
    """
    args = parse_arg(arg, dataset="imagenet_lt", model="", epochs=0, teachers=1)
    if args.dataset not in BENCHMARK_DEFAULTS:
        raise ValueError(
            f"dataset={args.dataset!r} has no large-scale recipe; choose one of "
            f"{sorted(BENCHMARK_DEFAULTS)}"
        )
    defaults = BENCHMARK_DEFAULTS[args.dataset]
    if method == "cbd":
        return cbd_large_scale_config(
            args.dataset,
            teachers=args.teachers,
            epochs=args.epochs or defaults["cbd_epochs"],
            weight_decay=defaults["cbd_weight_decay"],
        )
    return large_scale_config(
        args.dataset,
        method,
        model=args.model or defaults["model"],
        epochs=args.epochs or defaults["epochs"],
    )


def large_scale_config(
    dataset: str, method: str, *, model: str, epochs: int, weight_decay: float = 5e-4
) -> ml_collections.ConfigDict:
    """ImageNet-style recipe (docs/recipes.md#large-scale-recipe).

    224-pixel random-resized crops read from disk by 8 grain workers, bf16 compute with
    float32 parameters and loss, batch 512, SGD 0.9, lr 0.2 cosine to 0 per step. The
    datasets are long-tailed already, so no subset is taken (imbalance factor 1). The
    teacher of a distillation method shares the student's architecture and schedule.
    """
    c = base_config(method)
    c.data.name = dataset
    c.data.imbalance_factor = 1.0
    c.data.image_size = 224
    c.data.in_memory = "no"
    c.data.augment = "imagenet"
    c.data.num_workers = 8
    c.model.name = c.teacher.model = model
    c.model.dtype = "bfloat16"  # compute; parameters and the loss stay float32
    c.teacher.num_epochs = c.num_epochs = epochs
    c.batch_size = 512
    c.eval_batch_size = 1000
    c.optim.lr = 0.2
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 0
    c.optim.weight_decay = weight_decay
    c.log_every_steps = 100
    return set_method(c, method, methods.Setting("large_scale", dataset, model, model))


def cbd_large_scale_config(
    dataset: str, *, teachers: int, epochs: int, weight_decay: float
) -> ml_collections.ConfigDict:
    """CBD stage 2 as its official code runs it (docs/recipes.md#cbd).

    `weight_decay` is the official config's value; the effective decay applied is half of it
    (see below). The official code shuffles its example stream with a 1000-example buffer;
    ours shuffles each epoch globally, a deliberate choice: the same class balance per pass
    and no dependence on the order the examples are stored in.

    ResNet-50 with the fixed-sigma cosine head for teachers and student, the class-balancing
    example-stream resampler, (1 - 0.4) CE + 0.4 * 100 * (1 - cos); batch 128, lr
    0.1 * 128 / 256 cosine per step without warm-up, heavy-ball momentum, crop area
    [0.05, 1], pixels in [0, 1] without mean/std normalisation.
    """
    method = "cbd" if teachers == 1 else "cbd_ensemble"
    # The official train.py adds weight_decay * 0.5 * tf.nn.l2_loss(trainable variables) =
    # weight_decay / 4 * sum(theta^2) to the loss: a gradient of weight_decay / 2 * theta on
    # every variable, BatchNorm included. The optimiser's coupled decay adds
    # optim.weight_decay * theta, so it gets half the official config's number.
    c = large_scale_config(
        dataset, method, model="resnet50", epochs=epochs, weight_decay=weight_decay / 2
    )
    c.model.zero_init_residual = True  # the official blocks' bn_2: gamma_initializer='zeros'
    c.data.crop_min_area = 0.05
    c.data.normalize = False
    c.data.sampler = "cbd_stream"  # the official example-stream resampler (input_pipeline.py)
    c.teacher.count = teachers  # seeds seed + 1000, seed + 2000, ... (train.teacher_seed)
    # CBD_ENS = vanilla_seed1/2 + data_aug_seed1/2 (colour jitter + grayscale).
    c.teacher.color_jitter_teachers = teachers // 2
    c.batch_size = 128
    c.optim.lr = 0.05
    c.optim.nesterov = False
    return c


def folder_config(arg: str | None, method: str) -> ml_collections.ConfigDict:
    """A user's image-folder dataset (`<split>/<class>/<image>`, a folder or a zip).

    Arguments: root (the path; also `--config.data.root`), imb (1 = as it is, > 1 = an
    exponential long-tailed subset), model, augment (auto = cifar for images of 64 px or
    less, which then train on the device when they fit in RAM, imagenet above; or either by
    name), size (0 = automatic), epochs. Recipe: 100 epochs, batch 128, SGD 0.9, lr 0.1 with 5
    warm-up epochs (half the epochs when fewer than 10) and cosine decay, weight decay 5e-4;
    the teacher of a distillation method shares it.
    """
    args = parse_arg(arg, root="", imb=1.0, model="resnet10", augment="auto", size=0, epochs=100)
    c = base_config(method)
    c.data.name = "folder"
    c.data.root = args.root
    c.data.imbalance_factor = args.imb
    c.data.image_size = args.size
    c.data.augment = args.augment
    c.model.name = c.teacher.model = args.model
    c.teacher.num_epochs = c.num_epochs = args.epochs
    c.batch_size = 128
    c.eval_batch_size = 200
    c.optim.lr = 0.1
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = min(5, args.epochs // 2)  # a short smoke run (epochs=1) still decays
    c.optim.weight_decay = 5e-4
    return set_method(c, method, methods.Setting("folder", c.data.name, args.model, args.model))


def with_method(
    recipe: ml_collections.ConfigDict, method: str, recipe_name: str = ""
) -> ml_collections.ConfigDict:
    """`recipe` (data, models, schedule) running `method` with the recipe its `methods.Spec`
    declares (`defaults.set_method`; `recipe_name`, e.g. "bkd", selects the method's official
    settings for that recipe, empty: none). The loss fields counted in epochs (DRW start,
    DKD warm-up) keep their fraction of training: 160 of 200 epochs becomes 80 of 100.
    Returns an unlocked copy; `recipe` is unchanged."""
    c = ml_collections.ConfigDict(recipe.to_dict())
    setting = methods.Setting(recipe_name, c.data.name, c.teacher.model, c.model.name)
    set_method(c, method, setting)
    c.loss.update(methods.scaled_epoch_fields(c, c.num_epochs / DEFAULTS_EPOCHS))
    return c
