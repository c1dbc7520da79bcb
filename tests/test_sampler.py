"""Per-epoch branch sampling."""

import pytest

from reid_dhm import BranchSampler

BRANCHES = ("main", "aux1", "aux2", "aux3")


def test_fixed_activates_everything():
    sampler = BranchSampler(BRANCHES, "fixed")
    assert all(sampler.sample(e) == BRANCHES for e in range(5))


def test_bernoulli_is_reproducible_and_seeded():
    a = [BranchSampler(BRANCHES, "bernoulli", p=0.5, seed=7).sample(e) for e in range(50)]
    b = [BranchSampler(BRANCHES, "bernoulli", p=0.5, seed=7).sample(e) for e in range(50)]
    c = [BranchSampler(BRANCHES, "bernoulli", p=0.5, seed=8).sample(e) for e in range(50)]
    assert a == b and a != c
    # Resuming at epoch 30 draws the same set as the uninterrupted run.
    assert BranchSampler(BRANCHES, "bernoulli", p=0.5, seed=7).sample(30) == a[30]
    assert all(s[0] == "main" for s in a)
    # Order stays depth order.
    assert all(list(s) == [x for x in BRANCHES if x in s] for s in a)


def test_bernoulli_probabilities():
    sampler = BranchSampler(BRANCHES, "bernoulli", p={"aux1": 1.0, "aux2": 0.0, "aux3": 0.3})
    draws = [sampler.sample(e) for e in range(2000)]
    assert all("aux1" in d and "aux2" not in d for d in draws)
    rate = sum("aux3" in d for d in draws) / len(draws)
    assert 0.26 < rate < 0.34


def test_bad_arguments():
    with pytest.raises(ValueError, match="valid policies are"):
        BranchSampler(BRANCHES, "sometimes")
    with pytest.raises(ValueError, match="'aux7'"):
        BranchSampler(BRANCHES, "bernoulli", p={"aux7": 0.5})
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        BranchSampler(BRANCHES, "bernoulli", p=1.5)


def test_a_string_for_branches_is_refused():
    with pytest.raises(ValueError, match="branches must be a list of branch names.*'main'"):
        BranchSampler("main")
    with pytest.raises(ValueError, match="'main'"):
        BranchSampler("main", "bernoulli")


@pytest.mark.parametrize("seed", [-1, 1.5, "7", True])
def test_bad_seed_names_the_argument(seed):
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        BranchSampler(BRANCHES, "bernoulli", seed=seed)


def test_bad_epoch_names_the_argument():
    with pytest.raises(ValueError, match="epoch must be an integer >= 0, got -2"):
        BranchSampler(BRANCHES, "bernoulli").sample(-2)
