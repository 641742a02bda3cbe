"""Tests share processes (pytest-xdist splits the files differently from run to run): what one test changes in
torch's global configuration, it puts back."""

import torch

from conftest import eager_random_numbers


def test_eager_random_numbers_leaves_inductors_config_as_it_found_it():
    import torch._inductor.config as config

    before = config.fallback_random
    for _ in range(2):  # twice, as two compiled-vs-eager tests in one process would
        with eager_random_numbers():
            assert config.fallback_random is True
        assert hasattr(config, "fallback_random") and config.fallback_random == before


def test_a_compiled_function_draws_eagers_random_numbers_inside_the_block_only():
    def noisy(x):
        return x + torch.randn_like(x)

    x = torch.zeros(8)
    with eager_random_numbers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        expected = noisy(x)
        torch.manual_seed(0)
        assert torch.equal(torch.compile(noisy)(x), expected)
