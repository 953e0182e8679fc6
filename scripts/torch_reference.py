"""The PyTorch reference of `scripts/benchmark.py`: the BKD repository's CIFAR recipe.

ResNet-(6n+2) with option-A shortcuts (BKD / LDAM `models/resnet_cifar.py`), Kaiming-normal
init, SGD momentum 0.9, weight decay 2e-4, batch 128; BKD loss = CE + T^2 KL(q~ || p_T) with
the teacher's softened distribution re-weighted per class column by effective-number weights;
the teacher runs under `torch.no_grad()` in eval mode. Needs the `bench` extra (torch 2.13).

On a machine with CUDA everything runs on the GPU with `cudnn.benchmark` on, as the official
code does; every timed callable synchronises the device before it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.backends.cudnn.benchmark = True


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


class _OptionA(nn.Module):
    """Subsample by 2, zero-pad planes // 4 channels each side (LDAM's LambdaLayer)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        changes = stride != 1 or in_planes != planes
        self.shortcut = _OptionA(planes) if changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """conv3x3(16) -> BN -> ReLU -> 3 x n blocks (16/32/64, strides 1/2/2) -> GAP -> linear."""

    def __init__(self, depth: int = 32, num_classes: int = 100):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def effective_number_weights(class_counts: np.ndarray, beta: float = 0.9999) -> torch.Tensor:
    """(1 - beta) / (1 - beta^n_c), normalised to sum to the number of classes."""
    w = (1.0 - beta) / (1.0 - np.power(beta, class_counts))
    return torch.tensor(w / w.sum() * len(class_counts), dtype=torch.float32)


def bkd_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    weights: torch.Tensor,
    temperature: float = 2.0,
) -> torch.Tensor:
    """BKD: CE + T^2 batchmean KL(w * softmax(v/T) / Z || softmax(z/T))."""
    target = F.softmax(teacher_logits / temperature, dim=1) * weights
    target = target / target.sum(1, keepdim=True)
    kd = F.kl_div(F.log_softmax(logits / temperature, 1), target, reduction="batchmean")
    return F.cross_entropy(logits, labels) + temperature**2 * kd


def to_input(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (ToTensor + Normalize)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous().to(DEVICE)


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)


def train_step(
    student: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    teacher: nn.Module | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """One SGD step: CE, or BKD with the frozen teacher's forward pass when one is given."""
    teacher_logits = None
    if teacher is not None:
        with torch.no_grad():
            teacher_logits = teacher(x)
    student.train()
    logits = student(x)
    if teacher_logits is None:
        loss = F.cross_entropy(logits, y)
    else:
        loss = bkd_loss(logits, y, teacher_logits, weights)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def make_steps(
    depth: int,
    num_classes: int,
    class_counts: np.ndarray,
    batch: dict,
    eval_batch: dict,
    mean,
    std,
) -> dict[str, Callable[[], None]]:
    """Blocking callables `ce`, `bkd`, `eval` on pre-built batches (as in the JAX benchmark)."""
    torch.manual_seed(0)
    student = CifarResNet(depth, num_classes).to(DEVICE)
    teacher = CifarResNet(depth, num_classes).to(DEVICE).eval()
    opt = make_optimizer(student)
    weights = effective_number_weights(class_counts).to(DEVICE)
    x = to_input(batch["image"], mean, std)
    y = torch.from_numpy(batch["label"]).long().to(DEVICE)
    x_eval = to_input(eval_batch["image"], mean, std)

    def evaluate() -> None:
        with torch.no_grad():
            teacher(x_eval).argmax(1)
        _sync()

    def step(teacher=None, weights=None) -> None:
        train_step(student, opt, x, y, teacher, weights)
        _sync()

    return {
        "ce": step,
        "bkd": lambda: step(teacher, weights),
        "eval": evaluate,
    }


def make_conv_steps(
    layers: list[tuple[int, int, int]], batch_size: int, eval_size: int
) -> dict[str, Callable[[], None]]:
    """`train` (forward + backward to the weights) and `eval` (forward) of the model's 3x3
    convolutions alone, each followed by a ReLU: the convolution share of its steps."""
    torch.manual_seed(0)
    chain = nn.Sequential(
        *[
            m
            for c_in, c_out, stride in layers
            for m in (nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.ReLU())
        ]
    )
    x, x_eval = torch.randn(batch_size, 3, 32, 32), torch.randn(eval_size, 3, 32, 32)

    def train() -> None:
        chain.zero_grad(set_to_none=True)
        chain(x).sum().backward()

    def evaluate() -> None:
        with torch.no_grad():
            chain(x_eval)

    return {"train": train, "eval": evaluate}


class LongTailDataset(torch.utils.data.Dataset):
    """uint8 NHWC images with the BKD repo's train transforms: RandomCrop(32, padding=4),
    RandomHorizontalFlip, ToTensor, Normalize (per image, in the loader workers)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std):
        self.images, self.labels = images, labels
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        rng = np.random.default_rng()
        padded = np.pad(self.images[i], ((4, 4), (4, 4), (0, 0)))
        top, left = rng.integers(0, 9, 2)
        crop = padded[top : top + 32, left : left + 32]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        x = (crop.astype(np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), int(self.labels[i])


def time_training_loop(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    class_counts: np.ndarray,
    mean,
    std,
    steps: int,
    skip: int,
    distill: bool,
    num_workers: int,
    batch_size: int = 128,
) -> float:
    """images/s of `steps` training steps (after `skip` warm-up steps) with a DataLoader."""
    torch.manual_seed(0)
    student = CifarResNet(32, num_classes).to(DEVICE)
    teacher = CifarResNet(32, num_classes).to(DEVICE).eval() if distill else None
    weights = effective_number_weights(class_counts).to(DEVICE) if distill else None
    opt = make_optimizer(student)
    loader = torch.utils.data.DataLoader(
        LongTailDataset(images, labels, mean, std),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=DEVICE.type == "cuda",
        persistent_workers=num_workers > 0,
        # not fork: the calling process may be running JAX's thread pools
        multiprocessing_context="spawn" if num_workers > 0 else None,
    )
    done, start = 0, None
    while done < skip + steps:
        for x, y in loader:
            if done == skip:
                _sync()
                start = time.perf_counter()
            x, y = x.to(DEVICE, non_blocking=True), y.to(DEVICE, non_blocking=True)
            train_step(student, opt, x, y, teacher, weights)
            done += 1
            if done == skip + steps:
                break
    _sync()
    return steps * batch_size / (time.perf_counter() - start)
