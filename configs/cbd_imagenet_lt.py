"""CBD (single teacher) on ImageNet-LT (methods.md 8: stage 2 student, 8.3 optimisation).

On a Cloud TPU VM pod slice:

    gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="\
      cd ltkd_jax && python -m ltkd_jax.main --config configs/cbd_imagenet_lt.py \
      --workdir gs://$BUCKET/runs/cbd_imagenet_lt --distributed \
      --config.data.root=/mnt/disks/imagenet --config.data.list_dir=/mnt/disks/imagenet_lt \
      --config.data.data_dir=/mnt/disks/tfds"

Without `teacher.workdir` the run first trains the stage-1 teacher (CE, instance sampling,
same backbone and cosine head) into WORKDIR/teacher. ResNet-50 v1, cosine classifier with
fixed sigma 20, student projection Dense(2048) + ReLU; stage 2 samples with CBD's
class-balancing example-stream resampler (`cbd_stream`); loss (1 - 0.4) CE + 0.4 * 100 *
(1 - cos) on features. 90 epochs, batch 128, lr 0.05 cosine per step without warm-up, heavy-
ball momentum 0.9, weight decay 5e-4 on all parameters; random-resized crop area [0.05, 1].
"""

from ltkd_jax import config_lib


def get_config(arg=None):
    args = config_lib.parse_arg(arg, epochs=90)
    c = config_lib.base_config()
    c.method = "cbd"
    c.loss.alpha = 0.4
    c.loss.beta = 100.0
    c.data.name = "imagenet_lt"
    c.data.imbalance_factor = 1.0
    c.data.image_size = 224
    c.data.in_memory = "no"
    c.data.augment = "imagenet"
    c.data.crop_min_area = 0.05
    c.data.normalize = False  # pixels in [0, 1], no mean/std (methods.md 8.3)
    c.data.sampler = "cbd_stream"
    c.data.num_workers = 8
    c.model.name = "resnet50"
    c.model.head = "cosine"
    c.model.dtype = "bfloat16"
    c.teacher.model = "resnet50"
    c.teacher.head = "cosine"
    c.teacher.num_epochs = args.epochs
    c.teacher.count = 1
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.num_epochs = args.epochs
    c.optim.lr = 0.05  # 0.1 * 128 / 256
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 0
    c.optim.nesterov = False
    c.optim.weight_decay = 5e-4
    c.log_every_steps = 100
    return config_lib.lock(c)
