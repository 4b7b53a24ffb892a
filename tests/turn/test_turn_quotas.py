"""Quotas of the sans-IO TURN core: per user, per client address (an IPv6 client by its /64)
and in total, with EVEN-PORT reservations counted like allocations (issue #12, findings 3
and 7)."""

from __future__ import annotations

import pytest
from turn_core_driver import NOW, SERVER, Client, client, error_code, make_core, settings

from secureconnect.stun import AttrType, Method
from secureconnect.turn.allocation import source_key
from secureconnect.turn.core import TurnCore
from secureconnect.turn.quotas import QuotaBook

A = AttrType
RESERVE = (A.EVEN_PORT, b"\x80")


def book(core: TurnCore) -> QuotaBook:
    """The core's own quota book (one process: no worker shares it)."""
    quotas = core.quotas
    assert isinstance(quotas, QuotaBook)
    return quotas


def at(core: TurnCore, ip: str, port: int = 1, user: str = "alice") -> Client:
    """A client of ``core`` from ``ip``:``port``."""
    return client(core, ("udp", (ip, port), SERVER), user)


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("fe80::1%eth0", "fe80::/64"),
    ],
)
def test_source_key_is_the_ipv4_address_or_the_ipv6_slash_64(ip: str, key: str) -> None:
    assert source_key(ip) == key


def test_one_address_holds_at_most_ip_quota_whatever_the_user_names() -> None:
    core, _ = make_core(settings(ip_quota=3, user_quota=10))
    codes = [
        error_code(at(core, "198.51.100.7", port, f"u{port}").allocate()) for port in range(1, 5)
    ]
    assert codes == [None, None, None, 486]
    assert error_code(at(core, "198.51.100.8").allocate()) is None


def test_an_ipv6_host_cannot_escape_the_address_quota_by_changing_address() -> None:
    core, _ = make_core(settings(ip_quota=2, user_quota=10))
    ips = ["2001:db8::1", "2001:db8::2", "2001:db8::ffff"]
    codes = [error_code(at(core, ip, 1, f"u{i}").allocate()) for i, ip in enumerate(ips)]
    assert codes == [None, None, 486]
    assert error_code(at(core, "2001:db8:0:1::1", 1, "v").allocate()) is None


def test_a_reservation_needs_two_slots_and_keeps_one_after_the_allocation_goes() -> None:
    core, relays = make_core(settings(user_quota=3))
    c = at(core, "198.51.100.7")
    assert error_code(c.allocate(RESERVE)) is None  # allocation + reservation: 2 of 3
    assert book(core).by_user == {"alice": 2}
    assert error_code(c.request(Method.REFRESH, [(A.LIFETIME, bytes(4))])) is None
    assert book(core).by_user == {"alice": 1}  # the reservation stays counted
    assert error_code(c.allocate(RESERVE)) is None  # 3 of 3
    assert error_code(c.request(Method.REFRESH, [(A.LIFETIME, bytes(4))])) is None
    assert error_code(c.allocate(RESERVE)) == 486  # 2 held + 2 needed > 3
    assert len(relays.open()) == 2  # the two reservations, nothing else
    core.handle_timeout(NOW + 31)  # reservations expire (RFC 8656 §7.2: ~30 s)
    assert book(core).by_user == {}
    assert book(core).by_source == {}
    assert relays.open() == []


def test_a_token_moves_the_slot_to_whoever_allocates_with_it() -> None:
    core, _ = make_core(settings(user_quota=2, ip_quota=10))
    first = at(core, "198.51.100.7").allocate(RESERVE)
    token = first.get(A.RESERVATION_TOKEN)
    assert token is not None
    other = at(core, "198.51.100.8", user="bob")
    assert error_code(other.allocate((A.RESERVATION_TOKEN, token))) is None
    assert book(core).by_user == {"alice": 1, "bob": 1}
    assert book(core).by_source == {"198.51.100.7": 1, "198.51.100.8": 1}
    assert core.table.held() == 2


def test_a_token_refused_for_quota_stays_reserved() -> None:
    """A quota refusal of an Allocate with a token gives the reservation back: the token can
    still be used by someone with room."""
    core, _ = make_core(settings(user_quota=2, ip_quota=10))
    token = at(core, "198.51.100.7").allocate(RESERVE).get(A.RESERVATION_TOKEN)
    assert token is not None
    full = at(core, "198.51.100.8", user="bob")
    for port in (2, 3):
        assert error_code(at(core, "198.51.100.8", port, "bob").allocate()) is None
    assert error_code(full.allocate((A.RESERVATION_TOKEN, token))) == 486
    assert token in core.table.reservations
    assert core.table.held() == 4
    carol = at(core, "198.51.100.9", user="carol")
    assert error_code(carol.allocate((A.RESERVATION_TOKEN, token))) is None


def test_total_quota_counts_reservations() -> None:
    core, _ = make_core(settings(total_quota=3, user_quota=10, ip_quota=10))
    assert error_code(at(core, "198.51.100.7").allocate(RESERVE)) is None
    assert error_code(at(core, "198.51.100.8", user="b").allocate()) is None
    assert error_code(at(core, "198.51.100.9", user="c").allocate()) == 486


class Limits:
    total_quota = 5
    user_quota = 3
    ip_quota = 4


def test_the_book_takes_all_or_nothing_and_keeps_what_each_owner_holds() -> None:
    quota = QuotaBook(Limits())
    assert quota.take("alice", "192.0.2.1", 2, owner=1)
    assert not quota.take("alice", "192.0.2.2", 2, owner=2)  # alice: 2 + 2 > 3
    assert quota.by_user == {"alice": 2}  # nothing taken by the refusal
    assert quota.take("alice", "192.0.2.2", 1, owner=2)
    assert quota.take("bob", "192.0.2.1", 2, owner=2)
    assert not quota.take("carol", "192.0.2.3", 1, owner=0)  # total: 5 held
    assert (quota.held, quota.owned(1), quota.owned(2)) == (5, 2, 3)


def test_a_dead_owner_gives_back_everything_it_held_and_nothing_else() -> None:
    quota = QuotaBook(Limits())
    assert quota.take("alice", "192.0.2.1", 2, owner=1)
    assert quota.take("alice", "192.0.2.1", 1, owner=2)
    assert quota.drop_owner(1) == 2
    assert (quota.held, quota.by_user, quota.by_source) == (1, {"alice": 1}, {"192.0.2.1": 1})
    assert quota.drop_owner(1) == 0
    # A request of the dead owner's that arrives late takes nothing: no slot outlives it.
    assert not quota.take("alice", "192.0.2.9", 1, owner=1)
    assert quota.held == 1


def test_a_give_beyond_what_the_owner_holds_cannot_free_anyone_elses_slot() -> None:
    quota = QuotaBook(Limits())
    assert quota.take("alice", "192.0.2.1", 1, owner=1)
    quota.give("alice", "192.0.2.1", 5, owner=2)  # owner 2 holds nothing: ignored
    quota.give("alice", "192.0.2.1", 5, owner=1)  # only the one it holds
    assert (quota.held, quota.by_user) == (0, {})
    assert quota.take("x", "y", 0)  # nothing needed: always fits, nothing counted
    assert quota.held == 0
