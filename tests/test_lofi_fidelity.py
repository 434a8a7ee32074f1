"""LoFi's fidelity schedules yield the paper's documented sequences."""

import pytest

from e2etal.lofi.fidelity import Fidelity, FidelitySchedule, LoFiScheduleConfig, reduced_fidelities

FULL = Fidelity(100, 224, 16)  # ActivityNet-1.3, G-TAD protocol


def test_reduced_fidelities_are_the_papers():
    # Xu et al. 2021: S-LoFi 100 snippets at 112 px, T-LoFi 25 at 224, ST-LoFi 50 at 158; batch 16 in all.
    assert reduced_fidelities(FULL) == {"s": Fidelity(100, 112, 16), "t": Fidelity(25, 224, 16),
                                        "st": Fidelity(50, 158, 16)}
    # A ViT with 16-pixel patches takes multiples of 16 only.
    assert reduced_fidelities(FULL, size_multiple=16)["st"] == Fidelity(50, 160, 16)


def schedule(**kw) -> FidelitySchedule:
    return FidelitySchedule.from_config(LoFiScheduleConfig(**kw))


def test_long_cycle_switches_at_each_epoch_start():
    s = schedule(name="long_c")
    seq = [s(epoch, step) for epoch in range(5) for step in (0, 7, 100)]
    expected = [Fidelity(100, 112, 16)] * 3 + [Fidelity(25, 224, 16)] * 3 + [Fidelity(50, 158, 16)] * 3
    assert seq == expected + [Fidelity(100, 112, 16)] * 3 + [Fidelity(25, 224, 16)] * 3
    assert s.describe() == ("long_c: 100 snippets x 112 px, batch 16 -> 25 snippets x 224 px, batch 16 -> "
                            "50 snippets x 158 px, batch 16, switching at each epoch start")


def test_short_cycle_switches_every_16_batches_across_epochs():
    s = schedule(name="short_c")
    assert [s(0, step).snippets for step in (0, 15, 16, 31, 32, 47, 48)] == [100, 100, 25, 25, 50, 50, 100]
    assert s(3, 16) == s(0, 16)  # the epoch does not matter, only the step
    assert schedule(name="short_c", switch_batches=2)(0, 2).snippets == 25


@pytest.mark.parametrize("name, fidelity", [("full", Fidelity(100, 224, 16)), ("s", Fidelity(100, 112, 16)),
                                            ("t", Fidelity(25, 224, 16)), ("st", Fidelity(50, 158, 16))])
def test_single_fidelity_schedules(name, fidelity):
    s = schedule(name=name)
    assert {s(e, b) for e in range(4) for b in range(40)} == {fidelity}
    assert s.fidelities == [fidelity]


def test_custom_schedule_and_its_switching():
    per_epoch = schedule(name="custom", custom=[[16, 64, 4], [8, 96, 2]])
    assert [per_epoch(e, 0) for e in range(3)] == [Fidelity(16, 64, 4), Fidelity(8, 96, 2), Fidelity(16, 64, 4)]
    per_batches = schedule(name="custom", custom=[[16, 64, 4], [8, 96, 2]], per_epoch=False, switch_batches=3)
    assert [per_batches(0, b).snippets for b in range(7)] == [16, 16, 16, 8, 8, 8, 16]


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="lofi.schedule.name: expected one of"):
        LoFiScheduleConfig(name="medium_c")
    with pytest.raises(ValueError, match="custom schedule needs at least one"):
        LoFiScheduleConfig(name="custom")
    with pytest.raises(ValueError, match="snippets: expected a positive integer"):
        Fidelity(0, 224, 16)
