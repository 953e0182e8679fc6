"""CBD (class-balanced distillation, Iscen et al.) on CIFAR-LT.

    python -m ltkd_jax.main --config configs/cbd_cifar.py --workdir runs/cbd_c100 \
        --config.data.archive=../shared/data/cifar100-png.zip

    # the ensemble: 2 teachers (seeds 1000 and 2000; the second with colour jitter + grayscale)
    # trained first, distilled together
    python -m ltkd_jax.main --config configs/cbd_cifar.py:teachers=2 --workdir runs/cbdens \
        --config.data.archive=../shared/data/cifar100-png.zip

ltkd_jax/methods/cbd.py: teachers and student use a cosine classifier (sigma 20); the student adds a
Dense+ReLU projection as wide as the teachers' features together and is trained on a
class-balanced stream with (1 - alpha) * CE + alpha * beta * mean(1 - cos(f_s, f_T)),
alpha = 0.4, beta = 100. An ensemble of n > 1 teachers trains its last n // 2 teachers with
SimCLR v2 colour jitter + random grayscale (the official code's data-aug teachers). On CIFAR the
BKD recipe (5.3) replaces CBD's ImageNet schedule.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    items = [i for i in (arg or "").split(",") if i]
    args = defaults.parse_arg(",".join(i for i in items if i.startswith("teachers=")), teachers=1)
    rest = ",".join(i for i in items if not i.startswith("teachers="))
    method = "cbd" if args.teachers == 1 else "cbd_ensemble"
    c = recipes.cifar_config(rest or None, method)
    c.teacher.count = args.teachers
    c.teacher.color_jitter_teachers = args.teachers // 2  # the last half: colour jitter
    return defaults.lock(c)
