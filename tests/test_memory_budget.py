"""The shared decode memory budget: reserve, wait, time out, let what fits go first."""

from __future__ import annotations

import threading

import pytest

from gateway.memory_budget import BudgetTimeout, MemoryBudget


def test_reservations_add_up_and_are_given_back() -> None:
    budget = MemoryBudget(100, wait_s=0)
    with budget.reserve(60), budget.reserve(40):
        assert budget.in_use == 100
        with pytest.raises(BudgetTimeout, match="did not fit"), budget.reserve(1):
            pass
    assert (budget.in_use, budget.peak) == (0, 100)


def test_given_back_on_an_exception_too() -> None:
    budget = MemoryBudget(100, wait_s=0)
    with pytest.raises(RuntimeError), budget.reserve(70):
        raise RuntimeError("decoder failed")
    assert budget.in_use == 0


def test_more_than_the_whole_budget_never_fits() -> None:
    with pytest.raises(ValueError, match="whole budget"), MemoryBudget(100, wait_s=60).reserve(101):
        pass


def test_a_waiting_photo_goes_when_room_is_given_back_and_a_small_one_passes_it() -> None:
    budget = MemoryBudget(100, wait_s=60)
    held, big_in, small_in = threading.Event(), threading.Event(), threading.Event()
    release = threading.Event()

    def holder() -> None:
        with budget.reserve(70):
            held.set()
            release.wait(60)

    def big() -> None:
        with budget.reserve(50):
            big_in.set()

    def small() -> None:
        with budget.reserve(20):
            small_in.set()

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    assert held.wait(10)
    threads += [threading.Thread(target=big), threading.Thread(target=small)]
    threads[1].start()
    threads[2].start()
    assert small_in.wait(10)  # 70 + 20 fits although the big one asked first
    assert not big_in.is_set()
    release.set()
    assert big_in.wait(10)
    for thread in threads:
        thread.join(10)
    assert (budget.in_use, budget.peak) == (0, 90)
