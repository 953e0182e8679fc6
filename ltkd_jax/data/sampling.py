"""Re-weighted sampling as a stateless, seeded per-epoch index sequence (docs/sampling.md).

The sequence is a pure function of (seed, epoch), so it can be handed to `grain.MapDataset.source`
and resumed from a checkpointed position without storing any sampler state
(docs/sampling.md#determinism-and-resume).
"""

from __future__ import annotations

import collections.abc

import numpy as np

SAMPLERS = ("instance", "sqrt", "class_balanced", "progressive", "cbd_stream")
# cbd_stream targets the class-balanced distribution through example repetition
# (docs/sampling.md#cbd-stream).
_EXPONENT = {"instance": 1.0, "sqrt": 0.5, "class_balanced": 0.0, "cbd_stream": 0.0}


def class_sampling_probs(
    class_counts: np.ndarray, sampler: str, *, epoch: int = 0, num_epochs: int = 1
) -> np.ndarray:
    """float64 [C] probability of drawing each class (docs/sampling.md#samplers).

    `p_c ∝ n_c^q` with q = 1 (instance), 0.5 (sqrt), 0 (class_balanced, and the expected
    distribution of cbd_stream); empty classes get 0.
    progressive (Kang et al.): `(1 - e/E) * instance + (e/E) * class_balanced` at epoch e of E.
    """
    n = np.asarray(class_counts, dtype=np.float64)
    if n.ndim != 1 or (n < 0).any() or n.sum() <= 0:
        raise ValueError(f"class_counts must be non-negative with a positive sum, got {n}")
    if sampler == "progressive":
        if num_epochs < 1 or not 0 <= epoch <= num_epochs:
            raise ValueError(f"need 0 <= epoch <= num_epochs >= 1, got {epoch}, {num_epochs}")
        t = epoch / num_epochs
        return (1 - t) * class_sampling_probs(n, "instance") + t * class_sampling_probs(
            n, "class_balanced"
        )
    if sampler not in _EXPONENT:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}.")
    # n**0 would give empty classes weight 1; they must never be drawn.
    w = np.where(n > 0, n ** _EXPONENT[sampler], 0.0)
    return w / w.sum()


def cbd_repeat_ratios(class_counts: np.ndarray) -> np.ndarray:
    """float64 [C] CBD's per-example repeat ratio `r_c = (1/C) / pi_c`.

    `pi_c = n_c / N`; C counts the non-empty classes; empty classes get 0
    (docs/sampling.md#cbd-stream).
    """
    n = np.asarray(class_counts, dtype=np.float64)
    present = n > 0
    pi = n / n.sum()
    return np.where(present, (1.0 / present.sum()) / np.where(present, pi, 1.0), 0.0)


def cbd_stream_pass(labels: np.ndarray, ratios: np.ndarray, rng: np.random.Generator):
    """One shuffled pass of CBD's class-balancing resampler over the example stream.

    Example i of class c is emitted `floor(r_c)` times plus once more with probability
    `r_c - floor(r_c)` (for r_c < 1 that is: kept with probability r_c), then the pass is
    shuffled: CBD's `oversample_classes` + `undersampling_filter` (official
    input_pipeline.py), with a whole-pass shuffle instead of its 1000-example buffer.
    Expected N/C examples per class, ~N in total.
    """
    r = ratios[labels]
    base = np.floor(r)
    repeats = (base + (rng.random(len(r)) < r - base)).astype(np.int64)
    stream = np.repeat(np.arange(len(r)), repeats)
    return rng.permutation(stream)


class ReweightedIndexSequence(collections.abc.Sequence):
    """Dataset indices for `num_epochs` epochs of `epoch_len` draws each.

    Element k belongs to epoch `k // epoch_len`, whose draws come from
    `np.random.default_rng([seed, epoch])`. instance: a permutation of all indices (no
    replacement; repeated permutations if epoch_len > N, truncated if smaller). Other
    samplers: a class with `class_sampling_probs`, then a uniform instance of that class, with
    replacement. cbd_stream: shuffled passes of `cbd_stream_pass`, concatenated and cut to
    epoch_len. Stateless apart from a cache of the last epoch's array, so it pickles small
    and resumes exactly.
    """

    def __init__(
        self,
        labels: np.ndarray,
        num_classes: int,
        *,
        sampler: str,
        seed: int,
        epoch_len: int,
        num_epochs: int,
    ):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}.")
        if epoch_len < 1 or num_epochs < 1:
            raise ValueError(f"need epoch_len >= 1, num_epochs >= 1, got {epoch_len}, {num_epochs}")
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) == 0:
            raise ValueError("cannot sample from an empty split")
        self.sampler, self.seed = sampler, int(seed)
        self.epoch_len, self.num_epochs = int(epoch_len), int(num_epochs)
        self.num_classes = int(num_classes)
        self.class_counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
        # Indices grouped by class; class c occupies [starts[c], starts[c] + counts[c]).
        self._by_class = np.argsort(labels, kind="stable")
        self._starts = np.concatenate([[0], np.cumsum(self.class_counts)[:-1]])
        self._labels = labels
        self._cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.epoch_len * self.num_epochs

    def __getitem__(self, k):
        if isinstance(k, slice):
            return np.asarray([self[i] for i in range(*k.indices(len(self)))], dtype=np.int64)
        k = int(k)
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"index {k} out of range for length {len(self)}")
        epoch, pos = divmod(k, self.epoch_len)
        return int(self.epoch_indices(epoch)[pos])

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """int64 [epoch_len]: the draws of one epoch (cached; a pure function of seed, epoch)."""
        cached = self._cache  # One read: other threads may replace it concurrently.
        if cached is not None and cached[0] == epoch:
            return cached[1]
        indices = self._draw(epoch)
        self._cache = (epoch, indices)
        return indices

    def class_probs(self, epoch: int) -> np.ndarray:
        """The class distribution the sampler targets in `epoch`."""
        return class_sampling_probs(
            self.class_counts, self.sampler, epoch=epoch, num_epochs=self.num_epochs
        )

    def _draw(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self._by_class)
        if self.sampler == "instance":
            reps = -(-self.epoch_len // n)
            return np.concatenate([rng.permutation(n) for _ in range(reps)])[: self.epoch_len]
        if self.sampler == "cbd_stream":
            ratios = cbd_repeat_ratios(self.class_counts)
            passes, total = [], 0
            while total < self.epoch_len:  # A pass is ~N long; epochs keep a fixed length.
                passes.append(cbd_stream_pass(self._labels, ratios, rng))
                total += len(passes[-1])
            return np.concatenate(passes)[: self.epoch_len]
        classes = rng.choice(self.num_classes, size=self.epoch_len, p=self.class_probs(epoch))
        within = rng.integers(0, self.class_counts[classes])  # Empty classes have p_c = 0.
        return self._by_class[self._starts[classes] + within]

    def __getstate__(self):
        # Workers rebuild the cache themselves; do not ship it.
        return {**self.__dict__, "_cache": None}
