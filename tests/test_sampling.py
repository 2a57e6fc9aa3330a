"""Sampling: greedy argmax, Hugging Face's processor order, seeded reproducibility."""

import time

import numpy as np
import pytest

from mvlm_magic.errors import MvlmError
from mvlm_magic.runtime.sampling import GenerationConfig, Sampler

VOCAB = 32000


def random_logits(seed=0, vocab=VOCAB):
    return np.random.default_rng(seed).normal(0, 3, vocab).astype(np.float32)


def test_defaults_are_greedy():
    config = GenerationConfig()
    assert (config.max_new_tokens, config.temperature, config.top_p, config.top_k) == (256, 0.0, 1.0, 0)
    assert config.repetition_penalty == 1.0 and config.seed is None and config.stop_strings == ()
    assert config.greedy


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("top_k", 2.5),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("max_new_tokens", 0),
        ("max_new_tokens", True),
        ("seed", -3),
        ("seed", "7"),
        ("stop_strings", ("",)),
        ("stop_strings", (3,)),
        ("alternatives", -1),
        ("alternatives", 21),
        ("alternatives", True),
    ],
)
def test_invalid_settings_are_refused(field, value):
    with pytest.raises(MvlmError, match=field):
        GenerationConfig(**{field: value})


def test_stop_strings_normalised():
    assert GenerationConfig(stop_strings="</s>").stop_strings == ("</s>",)
    assert GenerationConfig(stop_strings=["a", "b"]).stop_strings == ("a", "b")


def test_greedy_is_argmax_with_first_index_on_ties():
    logits = random_logits()
    assert Sampler().next_token(logits, []) == int(np.argmax(logits))
    tied = np.zeros(10, dtype=np.float32)
    tied[[3, 7]] = 5.0
    assert Sampler().next_token(tied, []) == 3


def test_greedy_is_fast():
    sampler, logits = Sampler(), random_logits()
    start = time.perf_counter()
    for _ in range(200):
        sampler.next_token(logits, [1, 2, 3])
    assert (time.perf_counter() - start) / 200 < 1e-3


def test_sampling_is_fast_enough():
    logits = random_logits()
    for config in (GenerationConfig(temperature=0.7, top_k=50, top_p=0.9, seed=0),
                   GenerationConfig(temperature=0.7, top_p=0.9, seed=0)):
        sampler = Sampler(config)
        start = time.perf_counter()
        for _ in range(50):
            sampler.next_token(logits, list(range(100)))
        assert (time.perf_counter() - start) / 50 < 10e-3  # generous: the CI machine is shared


def test_same_seed_same_tokens():
    config = GenerationConfig(temperature=1.0, top_p=0.95, top_k=100, seed=42)
    runs = []
    for _ in range(2):
        sampler = Sampler(config)
        runs.append([sampler.next_token(random_logits(step), []) for step in range(30)])
    assert runs[0] == runs[1]
    other = Sampler(GenerationConfig(temperature=1.0, top_p=0.95, top_k=100, seed=43))
    assert [other.next_token(random_logits(step), []) for step in range(30)] != runs[0]


def test_top_k_one_and_tiny_top_p_are_greedy():
    for step in range(20):
        logits = random_logits(step)
        best = int(np.argmax(logits))
        assert Sampler(GenerationConfig(temperature=1.5, top_k=1, seed=step)).next_token(logits, []) == best
        assert Sampler(GenerationConfig(temperature=1.5, top_p=1e-9, seed=step)).next_token(logits, []) == best


def test_repetition_penalty_follows_hugging_face():
    logits = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    # Greedy would pick 0; after the penalty 2.0 / 3 < 1.0, so 2 wins. Negative logits are multiplied.
    assert Sampler(GenerationConfig(repetition_penalty=3.0)).next_token(logits, [0, 0, 1]) == 2
    assert Sampler(GenerationConfig(repetition_penalty=3.0)).next_token(logits, []) == 0
    # Ids outside the vocabulary (the image placeholder -200) are ignored.
    assert Sampler(GenerationConfig(repetition_penalty=3.0)).next_token(logits, [-200, 99]) == 0
    probabilities = {}
    for previous in ([], [1]):
        sampler = Sampler(GenerationConfig(temperature=1.0, repetition_penalty=2.0, seed=0))
        draws = [sampler.next_token(logits, previous) for _ in range(3000)]
        probabilities[tuple(previous)] = draws.count(1) / len(draws)
    assert probabilities[(1,)] < probabilities[()]


def test_sampled_frequencies_match_softmax():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.1]))
    sampler = Sampler(GenerationConfig(temperature=1.0, seed=7))
    draws = np.bincount([sampler.next_token(logits, []) for _ in range(10000)], minlength=4) / 10000
    assert np.allclose(draws, [0.5, 0.25, 0.15, 0.1], atol=0.02)
    # Temperature 0.5 squares the probabilities before renormalising.
    sampler = Sampler(GenerationConfig(temperature=0.5, seed=8))
    squared = np.array([0.25, 0.0625, 0.0225, 0.01]) / 0.345
    draws = np.bincount([sampler.next_token(logits, []) for _ in range(10000)], minlength=4) / 10000
    assert np.allclose(draws, squared, atol=0.02)


def test_top_k_and_top_p_restrict_the_candidates():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    top_k = Sampler(GenerationConfig(temperature=1.0, top_k=2, seed=1))
    assert {top_k.next_token(logits, []) for _ in range(500)} == {0, 1}
    # top_p 0.65: 0.4 alone is not enough, 0.4 + 0.3 is: the smallest set with total >= top_p.
    top_p = Sampler(GenerationConfig(temperature=1.0, top_p=0.65, seed=1))
    draws = np.bincount([top_p.next_token(logits, []) for _ in range(8000)], minlength=4) / 8000
    assert draws[2] == draws[3] == 0
    assert np.allclose(draws[:2], [4 / 7, 3 / 7], atol=0.02)


def test_top_p_on_a_flat_large_vocabulary_uses_the_full_sort():
    logits = np.zeros(VOCAB, dtype=np.float32)
    sampler = Sampler(GenerationConfig(temperature=1.0, top_p=0.5, seed=3))
    draws = {sampler.next_token(logits, []) for _ in range(100)}
    assert len(draws) > 90 and all(0 <= d < VOCAB for d in draws)


def test_bad_logits():
    with pytest.raises(MvlmError, match="shape"):
        Sampler().next_token(np.zeros((2, 5)), [])
    with pytest.raises(MvlmError, match="finite"):
        Sampler(GenerationConfig(temperature=1.0)).next_token(np.full(5, -np.inf), [])
