"""Tests share processes (pytest-xdist splits the files differently from run to run): what one test changes in
torch's global configuration, it puts back."""

import torch

from conftest import eager_random_numbers


def test_eager_random_numbers_leaves_inductors_config_as_it_found_it():
    import torch._inductor.config as config

    before = config.fallback_random, config.reorder_for_locality
    for _ in range(2):  # twice, as two compiled-vs-eager tests in one process would
        with eager_random_numbers():
            assert config.fallback_random is True and config.reorder_for_locality is False
        assert (config.fallback_random, config.reorder_for_locality) == before


def test_a_compiled_function_draws_eagers_random_numbers_in_eagers_order():
    """Two independent draws, the second's use cheaper to schedule first: the compiled function uses each as eager
    code does (torch 2.11's scheduler, reordering for locality, swapped them)."""

    def two_draws(x, w):
        smoothed = x + (0.1 * torch.randn_like(x)).clamp(-0.2, 0.2)
        members = torch.rand(5).topk(2).indices
        return (smoothed @ w)[:, members], members

    x, w = torch.zeros(8, 3), torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    with eager_random_numbers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        expected = two_draws(x, w)
        torch.manual_seed(0)
        got = torch.compile(two_draws, fullgraph=True)(x, w)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_a_compiled_function_draws_eagers_random_numbers_inside_the_block_only():
    def noisy(x):
        return x + torch.randn_like(x)

    x = torch.zeros(8)
    with eager_random_numbers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        expected = noisy(x)
        torch.manual_seed(0)
        assert torch.equal(torch.compile(noisy)(x), expected)
