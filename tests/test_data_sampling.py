"""Re-weighted samplers: target probabilities (docs/sampling.md#samplers), empirical
frequencies, determinism."""

import pickle

import numpy as np
import pytest

from ltkd_jax.data import SAMPLERS, ReweightedIndexSequence, class_sampling_probs

COUNTS = np.array([100, 20, 5])
PROBS = {
    "instance": [0.8, 0.16, 0.04],
    "sqrt": [0.598508, 0.267661, 0.133831],
    "class_balanced": [1 / 3, 1 / 3, 1 / 3],
}


def labels_for(counts):
    # Interleave classes so "grouped by class" is not accidentally the identity.
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.RandomState(0).permutation(labels)


@pytest.mark.parametrize("sampler", sorted(PROBS))
def test_class_probs(sampler):
    np.testing.assert_allclose(class_sampling_probs(COUNTS, sampler), PROBS[sampler], atol=1e-6)


def test_progressive_interpolates_instance_to_balanced():
    at = lambda e: class_sampling_probs(COUNTS, "progressive", epoch=e, num_epochs=10)
    np.testing.assert_allclose(at(0), PROBS["instance"])
    np.testing.assert_allclose(at(10), PROBS["class_balanced"])
    np.testing.assert_allclose(at(5), (np.array(PROBS["instance"]) + 1 / 3) / 2)
    head = [at(e)[0] for e in range(11)]
    assert (np.diff(head) < 0).all()


def test_probs_errors_and_empty_classes():
    np.testing.assert_allclose(class_sampling_probs([4, 0, 4], "class_balanced"), [0.5, 0, 0.5])
    with pytest.raises(ValueError, match="unknown sampler"):
        class_sampling_probs(COUNTS, "square_root")
    with pytest.raises(ValueError, match="non-negative"):
        class_sampling_probs([0, 0], "instance")


@pytest.mark.parametrize("sampler", ["instance", "sqrt", "class_balanced"])
def test_empirical_class_frequencies(sampler):
    labels = labels_for(COUNTS)
    draws = 120_000
    # instance = permutations of all 125 indices: exact frequencies up to the truncated tail.
    seq = ReweightedIndexSequence(labels, 3, sampler=sampler, seed=0, epoch_len=draws, num_epochs=1)
    freq = np.bincount(labels[seq.epoch_indices(0)], minlength=3) / draws
    # 5 sigma of a binomial proportion at 120k draws is < 0.006.
    np.testing.assert_allclose(freq, PROBS[sampler], atol=0.006)


def test_within_class_draws_are_uniform():
    labels = labels_for([30, 10])
    seq = ReweightedIndexSequence(
        labels, 2, sampler="class_balanced", seed=3, epoch_len=60_000, num_epochs=1
    )
    hits = np.bincount(seq.epoch_indices(0), minlength=len(labels))
    # Each class-0 image: p = 0.5 / 30; each class-1 image: p = 0.5 / 10.
    np.testing.assert_allclose(hits[labels == 0] / 60_000, 0.5 / 30, rtol=0.12)
    np.testing.assert_allclose(hits[labels == 1] / 60_000, 0.5 / 10, rtol=0.06)


def test_progressive_moves_from_instance_to_balanced():
    labels = labels_for(COUNTS)
    seq = ReweightedIndexSequence(
        labels, 3, sampler="progressive", seed=0, epoch_len=40_000, num_epochs=4
    )
    freq = [np.bincount(labels[seq.epoch_indices(e)], minlength=3) / 40_000 for e in range(4)]
    np.testing.assert_allclose(freq[0], PROBS["instance"], atol=0.01)
    np.testing.assert_allclose(
        freq[3], class_sampling_probs(COUNTS, "progressive", epoch=3, num_epochs=4), atol=0.01
    )
    assert freq[0][0] > freq[1][0] > freq[2][0] > freq[3][0]


def test_instance_is_a_permutation_per_epoch():
    labels = labels_for([50, 30, 20])
    seq = ReweightedIndexSequence(
        labels, 3, sampler="instance", seed=1, epoch_len=100, num_epochs=3
    )
    epochs = [np.asarray([seq[e * 100 + i] for i in range(100)]) for e in range(3)]
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(100))
    assert not np.array_equal(epochs[0], epochs[1])
    # Shorter epochs (drop-remainder batching) are permutation prefixes: no repeats.
    short = ReweightedIndexSequence(
        labels, 3, sampler="instance", seed=1, epoch_len=96, num_epochs=1
    )
    assert len(np.unique(short.epoch_indices(0))) == 96
    # Longer epochs chain whole permutations.
    long = ReweightedIndexSequence(
        labels, 3, sampler="instance", seed=1, epoch_len=250, num_epochs=1
    )
    np.testing.assert_array_equal(np.bincount(long.epoch_indices(0)[:200]), np.full(100, 2))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_determinism_by_seed_and_epoch(sampler):
    labels = labels_for([40, 20, 10, 5])
    make = lambda seed: ReweightedIndexSequence(
        labels, 4, sampler=sampler, seed=seed, epoch_len=64, num_epochs=3
    )
    a, b, c = make(0), make(0), make(1)
    assert len(a) == 192
    seq_a = [a[k] for k in range(len(a))]
    np.testing.assert_array_equal(seq_a, [b[k] for k in range(len(b))])
    np.testing.assert_array_equal(seq_a[:64], a.epoch_indices(0))
    assert not np.array_equal(a.epoch_indices(0), a.epoch_indices(1))
    assert not np.array_equal(a.epoch_indices(0), c.epoch_indices(0))
    # Random access in any order gives the same values (the per-epoch cache is transparent).
    np.testing.assert_array_equal([a[k] for k in range(191, -1, -1)], seq_a[::-1])
    assert a[-1] == seq_a[-1] and list(a[5:9]) == seq_a[5:9]
    with pytest.raises(IndexError):
        a[192]


def test_pickles_without_cache():
    labels = labels_for([40, 20])
    seq = ReweightedIndexSequence(labels, 2, sampler="sqrt", seed=5, epoch_len=1000, num_epochs=2)
    first = seq.epoch_indices(1).copy()
    clone = pickle.loads(pickle.dumps(seq))
    assert clone._cache is None
    np.testing.assert_array_equal(clone.epoch_indices(1), first)


def test_empty_class_never_drawn():
    labels = labels_for([30, 0, 10])
    seq = ReweightedIndexSequence(
        labels, 3, sampler="class_balanced", seed=0, epoch_len=3000, num_epochs=1
    )
    freq = np.bincount(labels[seq.epoch_indices(0)], minlength=3) / 3000
    assert freq[1] == 0
    np.testing.assert_allclose(freq, [0.5, 0, 0.5], atol=0.05)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="unknown sampler"):
        ReweightedIndexSequence([0, 1], 2, sampler="cbs", seed=0, epoch_len=2, num_epochs=1)
    with pytest.raises(ValueError, match="epoch_len"):
        ReweightedIndexSequence([0, 1], 2, sampler="sqrt", seed=0, epoch_len=0, num_epochs=1)
