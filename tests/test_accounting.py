"""The bounded accounting structures of /metrics: histograms and the top-N table, and how the
exposition renders and sums them."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from secureconnect.accounting import (
    OTHER,
    Histogram,
    TopTable,
    is_cumulative,
    label_value,
)
from secureconnect.signal.exposition import render


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    histogram = Histogram((1, 10, 60))
    for value in (0.5, 1, 1.5, 10, 59, 61, 3600, -2):
        histogram.observe(value)
    assert histogram.samples("x_seconds") == {
        'x_seconds_bucket{le="1"}': 3,  # 0.5, 1 (a bound counts as <=) and -2 (as 0)
        'x_seconds_bucket{le="10"}': 5,
        'x_seconds_bucket{le="60"}': 6,
        'x_seconds_bucket{le="+Inf"}': 8,
        "x_seconds_sum": 0.5 + 1 + 1.5 + 10 + 59 + 61 + 3600,
        "x_seconds_count": 8,
    }


@pytest.mark.parametrize("bounds", [(), (1, 1), (5, 1), (1, float("inf"))])
def test_histogram_bounds_must_be_finite_and_increasing(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="bound"):
        Histogram(bounds)


def test_histograms_render_typed_and_sum_over_processes() -> None:
    """Two processes' histograms of the same bounds, reported in a scrambled order, render as
    one histogram family whose buckets are those of every observation; a parser accepts it."""
    first, second = Histogram((1, 10)), Histogram((1, 10))
    for value in (0.5, 5):
        first.observe(value)
    for value in (7, 20, 30):
        second.observe(value)
    scrambled = dict(reversed(list(second.samples("turn_allocation_lifetime_seconds").items())))
    text = render(
        [
            first.samples("turn_allocation_lifetime_seconds"),
            scrambled,
            {"turn_allocations_created_total": 5, "turn_allocations": 1},
        ]
    )
    assert "# TYPE turn_allocation_lifetime_seconds histogram" in text
    assert "# TYPE turn_allocations_created_total counter" in text
    assert "# TYPE turn_allocations gauge" in text
    lines = [line for line in text.splitlines() if line.startswith("turn_allocation_lifetime")]
    assert lines == [
        'turn_allocation_lifetime_seconds_bucket{le="1"} 1',
        'turn_allocation_lifetime_seconds_bucket{le="10"} 3',
        'turn_allocation_lifetime_seconds_bucket{le="+Inf"} 5',
        "turn_allocation_lifetime_seconds_sum 62.5",
        "turn_allocation_lifetime_seconds_count 5",
    ]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["turn_allocation_lifetime_seconds"].type == "histogram"
    assert families["turn_allocations_created"].type == "counter"


def test_a_family_that_only_looks_like_a_histogram_part_stays_a_gauge() -> None:
    text = render([{"pool_count": 3, "x_bucket": 1}])
    assert "# TYPE pool_count gauge" in text
    assert "# TYPE x_bucket gauge" in text  # no le label: not a histogram's bucket


def test_label_values_are_escaped() -> None:
    assert label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    name = f'turn_user_allocations_total{{user="{label_value(chr(34) + "} 1")}"}}'
    families = list(text_string_to_metric_families(render([{name: 2}])))
    assert families[0].samples[0].labels == {"user": '"} 1'}


def test_cumulative_names() -> None:
    assert is_cumulative('turn_relayed_bytes_total{direction="to_peer"}')
    assert is_cumulative('x_seconds_bucket{le="1"}')
    assert is_cumulative("x_seconds_sum")
    assert is_cumulative("x_seconds_count")
    assert not is_cumulative("turn_allocations")


def test_top_table_keeps_the_heavy_keys_and_sums_the_rest_under_other() -> None:
    table = TopTable(2, 2)
    table.add("alice", 100, (1, 100))
    table.add("bob", 0, (1, 0))  # room left: a key enters even with weight 0
    table.add("carol", 0, (1, 0))  # full, weight 0: other
    assert dict(table.report()) == {"alice": (1, 100), "bob": (1, 0), OTHER: (1, 0)}
    table.add("carol", 5, (0, 5))  # weight > 0: replaces the lightest (bob), counts from now
    assert dict(table.report()) == {"alice": (1, 100), "carol": (0, 5), OTHER: (1, 0)}
    assert table.evictions == 1
    table.add("bob", 1, (0, 1))  # enters again over carol (5 + 0 < 100): starts at 0
    assert dict(table.report()) == {"alice": (1, 100), "bob": (0, 1), OTHER: (1, 0)}
    table.add(OTHER, 1000, (1, 1000))  # a user named "other" is counted under other
    assert "other" not in table
    assert dict(table.report())[OTHER] == (2, 1000)


def test_an_evicted_keys_unreported_counts_move_to_other() -> None:
    """Across every label, the series' increases are exactly what was observed: an evicted key's
    series keeps what a report showed, and what came after goes to other."""
    table = TopTable(1, 1)
    table.add("a", 5, (5,))
    assert table.report() == [("a", (5,)), (OTHER, (0,))]  # a scrape saw a at 5
    table.add("a", 3, (3,))  # not seen by any scrape
    table.add("b", 1, (1,))  # evicts a: its 3 unreported go to other
    table.add("c", 1, (1,))  # evicts b, never reported: all of it goes to other
    assert table.report() == [("c", (1,)), (OTHER, (4,))]
    seen = {"a": 5, "c": 1, OTHER: 4}  # the increases a scraper saw, per series
    assert sum(seen.values()) == 5 + 3 + 1 + 1


def test_top_table_reports_heaviest_first_and_nothing_when_off() -> None:
    table = TopTable(3, 1)
    for key, weight in (("a", 1), ("b", 3), ("c", 2)):
        table.add(key, weight, (weight,))
    assert [key for key, _ in table.report()] == ["b", "c", "a", OTHER]
    table.resize(1)
    assert [key for key, _ in table.report()] == ["b", OTHER]
    table.resize(0)
    table.add("d", 9, (9,))
    assert list(table.report()) == []
    assert len(table) == 0


def test_top_table_memory_is_flat_however_many_keys_pass() -> None:
    """A hundred thousand distinct keys: the table holds ``capacity`` of them, whatever their
    weights; the heavy hitter (more than total / capacity) is among them (Space-Saving)."""
    table = TopTable(20, 1)
    for i in range(100_000):
        table.add(f"user-{i}", i % 7, (i % 7,))
        if i % 10 == 0:
            table.add("heavy", 50, (50,))
    assert len(table) == 20
    assert dict(table.report())["heavy"] == (50 * 10_000,)  # in since its first datagram
