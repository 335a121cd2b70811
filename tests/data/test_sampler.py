"""Resumable distributed sampler: exact partitions, exact resume, elastic world size."""

import io

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from linnaeus.data.sampler import ResumableDistributedSampler, ShardedEvalSampler


def ranks(n, world, seed=0, epoch=0, **kw):
    samplers = [ResumableDistributedSampler(n, world, r, seed, **kw) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    return samplers


def indices(sampler):
    return [i for _, i in sampler]


@pytest.mark.parametrize("n", [1, 10, 17, 100])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_partition_the_epoch_exactly(n, world):
    samplers = ranks(n, world, seed=3, epoch=5)
    per_rank = [indices(s) for s in samplers]
    order = samplers[0].global_order(5)
    assert sorted(order) == list(range(n))
    # equal counts (DDP needs the same number of steps on every rank), no overlap, no gaps
    assert all(len(p) == n // world == len(s) for p, s in zip(per_rank, samplers))
    flat = [i for p in per_rank for i in p]
    assert len(set(flat)) == len(flat)
    assert set(flat) == set(order[: (n // world) * world])
    # rank r takes global positions r, r + W, ...
    assert per_rank[world - 1] == order[world - 1 : (n // world) * world : world]
    assert all(epoch == 5 for s in samplers for epoch, _ in s)


@pytest.mark.parametrize("n,world", [(10, 3), (17, 4), (5, 8)])
def test_padding_without_drop_last_covers_every_sample(n, world):
    per_rank = [indices(s) for s in ranks(n, world, drop_last=False)]
    assert len({len(p) for p in per_rank}) == 1
    assert set(i for p in per_rank for i in p) == set(range(n))


def test_epochs_and_seeds_give_different_orders_and_are_reproducible():
    a = ResumableDistributedSampler(200, 1, 0, seed=7)
    orders = [a.global_order(e) for e in range(4)]
    assert len({tuple(o) for o in orders}) == 4
    b = ResumableDistributedSampler(200, 1, 0, seed=7)
    assert b.global_order(2) == orders[2]
    assert ResumableDistributedSampler(200, 1, 0, seed=8).global_order(2) != orders[2]
    assert ResumableDistributedSampler(20, 1, 0, shuffle=False).global_order(3) == list(range(20))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_resume_at_every_position_yields_exactly_the_remaining_indices(world):
    n = 23
    for rank in range(world):
        full = list(ranks(n, world, seed=11, epoch=2)[rank])
        for k in range(len(full) + 1):
            s = ranks(n, world, seed=11, epoch=2)[rank]
            s.advance(k)  # every rank consumed k samples
            buf = io.BytesIO()
            torch.save({"sampler": s.state_dict()}, buf)
            buf.seek(0)
            state = torch.load(buf, weights_only=True)["sampler"]

            fresh = ResumableDistributedSampler(n, world, rank, seed=11)
            fresh.load_state_dict(state)
            fresh.set_epoch(2)  # the training loop calls this at the start of the resumed epoch
            assert len(fresh) == len(full) - k
            assert list(fresh) == full[k:]


def test_set_epoch_after_a_resumed_epoch_starts_the_next_from_zero():
    s = ResumableDistributedSampler(30, 2, 0, seed=1)
    s.set_epoch(4)
    s.advance(5)
    fresh = ResumableDistributedSampler(30, 2, 0, seed=1)
    fresh.load_state_dict(s.state_dict())
    fresh.set_epoch(4)
    fresh.set_epoch(4)  # a redundant call on the resume path must not rewind the epoch
    assert len(fresh) == 10
    fresh.advance(10)
    assert len(fresh) == 0
    fresh.set_epoch(5)
    assert len(fresh) == 15
    assert list(fresh) == list(ranks(30, 2, seed=1, epoch=5)[0])
    # once training has moved on, set_epoch of the resumed epoch (a new run of it) starts from zero
    fresh.set_epoch(4)
    assert len(fresh) == 15


def test_state_is_plain_ints():
    s = ResumableDistributedSampler(30, 2, 1, seed=9)
    s.set_epoch(3)
    s.advance(4)
    s.skip([5], 2)
    sd = s.state_dict()
    assert sd == {"epoch": 3, "consumed": 8, "seed": 9, "num_replicas": 2, "num_samples": 30, "skip": [[5, 2]]}
    assert all(type(v) is int for k, v in sd.items() if k != "skip")
    assert all(type(v) is int for pair in sd["skip"] for v in pair)


@pytest.mark.parametrize("old_world,new_world", [(2, 3), (4, 1), (3, 2), (1, 4)])
def test_elastic_world_size_change_keeps_the_global_position(old_world, new_world):
    n, epoch, seed = 50, 1, 5
    old = ranks(n, old_world, seed=seed, epoch=epoch)
    k = 3
    seen = set()
    for s in old:
        seen.update(indices(s)[:k])
        s.advance(k)
    state = old[0].state_dict()
    consumed = k * old_world
    assert state["consumed"] == consumed

    new = [ResumableDistributedSampler(n, new_world, r, seed) for r in range(new_world)]
    for s in new:
        s.load_state_dict(state)
        s.set_epoch(epoch)
    per_rank = [indices(s) for s in new]
    order = new[0].global_order(epoch)
    expected_len = (n - consumed) // new_world
    assert all(len(p) == expected_len for p in per_rank)
    flat = [i for p in per_rank for i in p]
    # the rest of the epoch, nothing seen twice, nothing skipped beyond the drop_last tail
    assert sorted(flat) == sorted(order[consumed : consumed + expected_len * new_world])
    assert not seen & set(flat)
    assert seen == set(order[:consumed])


def test_load_rejects_foreign_or_mismatched_state():
    s = ResumableDistributedSampler(30, 2, 0, seed=1)
    with pytest.raises(ValueError, match="lacks.*consumed"):
        s.load_state_dict({"epoch": 1, "seed": 1, "num_replicas": 2})
    with pytest.raises(ValueError, match="40 samples.*30"):
        s.load_state_dict({"epoch": 1, "consumed": 0, "seed": 1, "num_replicas": 2, "num_samples": 40})
    with pytest.raises(ValueError, match="must be ints"):
        s.load_state_dict({"epoch": 1.5, "consumed": 0, "seed": 1, "num_replicas": 2})
    # the key name used in docs/ARCHITECTURE.md is accepted too
    s.load_state_dict({"epoch": 1, "consumed": 4, "seed": 1, "world_size": 2})
    assert (s.epoch, s.consumed) == (1, 4)


@pytest.mark.parametrize("n,world", [(10, 3), (7, 7), (3, 5), (100, 4)])
def test_eval_sampler_shards_without_padding(n, world):
    shards = [list(ShardedEvalSampler(n, world, r)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(ShardedEvalSampler(n, world, r)) for r in range(world)] == [len(s) for s in shards]


class KeyDataset(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        epoch, index = key
        return torch.tensor([epoch, index])


def test_position_is_exact_however_far_workers_prefetch():
    """Interrupt after 3 steps while 2 workers have prefetched more: the resumed loader
    yields exactly the batches the uninterrupted run would have yielded next."""
    n, bs = 64, 4
    ds = KeyDataset(n)
    ref = ResumableDistributedSampler(n, 2, 1, seed=3)
    ref.set_epoch(1)
    reference = [b.tolist() for b in DataLoader(ds, batch_size=bs, sampler=ref, drop_last=True)]

    s = ResumableDistributedSampler(n, 2, 1, seed=3)
    s.set_epoch(1)
    loader = DataLoader(ds, batch_size=bs, sampler=s, drop_last=True, num_workers=2, prefetch_factor=4)
    it = iter(loader)
    got = []
    for _ in range(3):
        got.append(next(it).tolist())
        s.advance(bs)
    state = s.state_dict()
    del it

    resumed = ResumableDistributedSampler(n, 2, 1, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    rest = [b.tolist() for b in DataLoader(ds, batch_size=bs, sampler=resumed, drop_last=True)]
    assert got + rest == reference


def test_skipped_samples_leave_the_order_from_their_epoch_on_and_the_position_stays_exact():
    """A rollback skips the samples of a bad step: they drop out of that epoch (after the position the
    epoch continues from) and of every later one; earlier epochs and consumed positions are unchanged."""
    a = ResumableDistributedSampler(40, 2, 0, seed=1)
    a.set_epoch(3)
    before = a.global_order(3)
    bad = a.indices_between(3, 16, 20)  # the global positions one step of 2 x 2 samples consumed
    assert bad == before[16:20]
    a.skip(bad, from_epoch=3)
    after = a.global_order(3)
    assert after[:16] == before[:16] and after[16:] == [i for i in before[16:] if i not in bad]
    assert a.epoch_length(3) == 36 and a.global_order(2) == ResumableDistributedSampler(40, seed=1).global_order(2)
    assert not set(bad) & set(a.global_order(9))
    # The skip list is saved with the position; an older state without it loads with none.
    b = ResumableDistributedSampler(40, 2, 0, seed=1)
    b.load_state_dict(torch.load(io.BytesIO(_saved(a)), weights_only=True))
    assert b.skipped == a.skipped and b.global_order(3) == after
    old = {k: v for k, v in a.state_dict().items() if k != "skip"}
    b.load_state_dict(old)
    assert b.skipped == {}
    # Each rank still gets the same number of samples of what is left.
    a.load_state_dict({**a.state_dict(), "consumed": 16})
    r1 = ResumableDistributedSampler(40, 2, 1, seed=1)
    r1.load_state_dict(a.state_dict())
    assert len(a) == len(r1) == 10 and not set(indices(a)) & set(indices(r1)) and not set(indices(a)) & set(bad)


def test_a_skip_list_that_names_no_valid_sample_is_refused():
    s = ResumableDistributedSampler(10)
    with pytest.raises(ValueError, match="outside the dataset of 10"):
        s.skip([10], 0)
    with pytest.raises(ValueError, match="every sample"):
        s.skip(range(10), 0)
    with pytest.raises(ValueError, match="'skip' must be a list of"):
        s.load_state_dict({**s.state_dict(), "skip": [[1]]})


def _saved(sampler) -> bytes:
    buf = io.BytesIO()
    torch.save(sampler.state_dict(), buf)
    return buf.getvalue()
