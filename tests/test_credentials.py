"""TURN REST API credentials, secret rotation, static users, stateless nonces."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secureconnect.credentials import (
    DEFAULT_TTL,
    MAX_TTL,
    NONCE_COOKIE,
    CredentialMinter,
    NonceMint,
    RestCredential,
    StaticUsers,
    parse_expiry,
    rest_password,
)

NOW = 1_700_000_000.25
KEY = bytes(range(32))


def direct_password(secret: str, username: str) -> str:
    """The REST API password computed straight from the definition, not through the module."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class TestRestPassword:
    def test_known_answer(self) -> None:
        # Computed with `openssl dgst -sha1 -hmac north -binary | base64`.
        assert rest_password("north", "1700000000:alice") == "Cd/49soE35ICqcJF/bCTn8Z4OyE="
        assert rest_password("north", "1700000000:alice") == direct_password(
            "north", "1700000000:alice"
        )

    @pytest.mark.parametrize(
        ("secret", "username"),
        [
            ("north", "1700000000"),
            ("s3cr3t with spaces", "1700000000:bob@example.org"),
            ("ключ", "1700000000:マトリックス"),
            ("x" * 200, "0:" + "y" * 400),
        ],
    )
    def test_matches_the_definition(self, secret: str, username: str) -> None:
        password = rest_password(secret, username)
        assert password == direct_password(secret, username)
        assert len(base64.b64decode(password)) == 20  # SHA-1

    def test_never_raises_on_a_lone_surrogate(self) -> None:
        assert len(rest_password("north", "1700000000:\ud800")) == 28


class TestRestCredential:
    CRED = RestCredential("1700086400:alice", "cGFzcw==", 86_400, 1_700_086_400)
    URIS = ("turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:443")

    def test_rest_api_json(self) -> None:
        assert self.CRED.to_json(self.URIS) == {
            "username": "1700086400:alice",
            "password": "cGFzcw==",
            "ttl": 86_400,
            "uris": list(self.URIS),
        }

    def test_rtc_ice_server(self) -> None:
        assert self.CRED.to_ice_server(self.URIS) == {
            "urls": list(self.URIS),
            "username": "1700086400:alice",
            "credential": "cGFzcw==",
        }

    def test_a_single_uri_string_is_refused(self) -> None:
        with pytest.raises(TypeError, match="list of URIs"):
            self.CRED.to_json("turn:turn.example.org")
        with pytest.raises(TypeError, match="list of URIs"):
            self.CRED.to_ice_server("turn:turn.example.org")

    def test_repr_hides_the_password(self) -> None:
        assert "cGFzcw==" not in repr(self.CRED)
        assert "1700086400:alice" in repr(self.CRED)

    def test_frozen(self) -> None:
        with pytest.raises(AttributeError):
            self.CRED.password = "other"  # type: ignore[misc]


class TestMint:
    def test_mint_with_user(self) -> None:
        minter = CredentialMinter(["newest", "older"])
        cred = minter.mint("alice", 3600, NOW)
        assert cred.username == "1700003600:alice"
        assert cred.expires == int(NOW) + 3600
        assert cred.ttl == 3600
        assert cred.password == direct_password("newest", "1700003600:alice")
        assert minter.parse_expiry(cred.username) == cred.expires

    def test_mint_without_user_is_a_bare_expiry(self) -> None:
        cred = CredentialMinter(["s"]).mint(None, DEFAULT_TTL, NOW)
        assert cred.username == str(int(NOW) + DEFAULT_TTL)
        assert cred.password == direct_password("s", cred.username)

    def test_max_ttl_is_inclusive_and_configurable(self) -> None:
        assert CredentialMinter(["s"]).mint("a", MAX_TTL, NOW).ttl == MAX_TTL
        short = CredentialMinter(["s"], max_ttl=60)
        assert short.max_ttl == 60
        with pytest.raises(ValueError, match="between 1 and 60"):
            short.mint("a", 61, NOW)

    @pytest.mark.parametrize("ttl", [0, -1, MAX_TTL + 1, 10**12])
    def test_bad_ttl(self, ttl: int) -> None:
        with pytest.raises(ValueError, match="ttl"):
            CredentialMinter(["s"]).mint("alice", ttl, NOW)

    @pytest.mark.parametrize("ttl", [True, 1.5, "60", None])
    def test_ttl_must_be_an_int(self, ttl: object) -> None:
        with pytest.raises(TypeError, match="ttl"):
            CredentialMinter(["s"]).mint("alice", ttl, NOW)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("user", "message"),
        [
            ("a:b", "must not contain ':'"),
            (":", "must not contain ':'"),
            ("", "empty"),
            ("bad\nuser", "control"),
            ("tab\tuser", "control"),
            ("nul\x00", "control"),
            ("x" * 600, "fewer than 509 bytes"),
            ("é" * 250, "fewer than 509 bytes"),
            ("\ud800", "unprintable"),
        ],
    )
    def test_bad_user(self, user: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            CredentialMinter(["s"]).mint(user, 60, NOW)

    def test_user_must_be_a_string(self) -> None:
        with pytest.raises(TypeError, match="user id"):
            CredentialMinter(["s"]).mint(42, 60, NOW)  # type: ignore[arg-type]

    @pytest.mark.parametrize("now", [math.nan, math.inf, -1.0])
    def test_bad_now(self, now: float) -> None:
        with pytest.raises(ValueError, match="now"):
            CredentialMinter(["s"]).mint("alice", 60, now)

    def test_unicode_user(self) -> None:
        cred = CredentialMinter(["s"]).mint("マトリックス", 60, NOW)
        assert cred.password == direct_password("s", cred.username)


class TestSecrets:
    @pytest.mark.parametrize("secrets", [[], [""], ["ok", ""], [None]])
    def test_bad_secret_lists(self, secrets: list[str]) -> None:
        with pytest.raises(ValueError, match="secret"):
            CredentialMinter(secrets)

    def test_a_single_string_is_not_a_list(self) -> None:
        with pytest.raises(TypeError, match="list of strings"):
            CredentialMinter("secret")

    def test_duplicates_are_dropped_in_order(self) -> None:
        assert CredentialMinter(["b", "a", "b"]).secrets == ("b", "a")

    @pytest.mark.parametrize("max_ttl", [0, -5, True])
    def test_bad_max_ttl(self, max_ttl: int) -> None:
        with pytest.raises(ValueError, match="max_ttl"):
            CredentialMinter(["s"], max_ttl=max_ttl)

    def test_repr_hides_secrets(self) -> None:
        text = repr(CredentialMinter(["hunter2-secret", "older"]))
        assert "hunter2" not in text
        assert "older" not in text
        assert "2 secrets" in text

    def test_passwords_for_offers_one_candidate_per_secret_newest_first(self) -> None:
        minter = CredentialMinter(["new", "old"])
        assert minter.passwords_for("1700000000:bob") == (
            direct_password("new", "1700000000:bob"),
            direct_password("old", "1700000000:bob"),
        )

    def test_rotation(self) -> None:
        shared = CredentialMinter(["old"])
        signaling, turn = shared, shared  # components hold the same object
        cred = signaling.mint("alice", 600, NOW)
        assert cred.password in turn.passwords_for(cred.username)

        shared.replace_secrets(["new", "old"])  # rotate: new secret first, old still accepted
        assert cred.password in turn.passwords_for(cred.username)
        fresh = signaling.mint("alice", 600, NOW)
        assert fresh.password == direct_password("new", fresh.username)
        assert fresh.password in turn.passwords_for(fresh.username)

        shared.replace_secrets(["new"])  # the old secret is retired
        assert cred.password not in turn.passwords_for(cred.username)
        assert fresh.password in turn.passwords_for(fresh.username)

    def test_a_rejected_reload_keeps_the_old_secrets(self) -> None:
        minter = CredentialMinter(["keep"])
        with pytest.raises(ValueError, match="secret"):
            minter.replace_secrets([])
        assert minter.secrets == ("keep",)

    def test_passwords_for_never_raises(self) -> None:
        minter = CredentialMinter(["s", "t"])
        assert len(minter.passwords_for("\ud800\udfff" * 1000)) == 2
        assert len(minter.passwords_for("")) == 2


class TestParseExpiry:
    @pytest.mark.parametrize(
        ("username", "expected"),
        [
            ("1700000000:alice", 1_700_000_000),
            ("1700000000", 1_700_000_000),
            ("1700000000:", 1_700_000_000),
            ("1700000000:a:b", 1_700_000_000),
            ("0:x", 0),
            ("0001700000000:x", None),  # 13 digits
            ("99999999999:x", 99_999_999_999),
            ("1700000000000:alice", None),  # milliseconds
            ("alice:1700000000", None),
            ("alice", None),
            ("", None),
            (":1700000000", None),
            (" 1700000000:a", None),
            ("1700000000 :a", None),
            ("+1700000000:a", None),
            ("-1:a", None),
            ("17_0000_0000:a", None),
            ("1.7e9:a", None),
            ("²:a", None),
            ("\u0661\u0667\u0660\u0660:a", None),  # Arabic-Indic digits
            ("1" * 5000, None),
            ("1700000000:" + "a" * 600, None),
        ],
    )
    def test_cases(self, username: str, expected: int | None) -> None:
        assert parse_expiry(username) == expected
        assert CredentialMinter.parse_expiry(username) == expected

    @pytest.mark.parametrize("junk", [None, 1700000000, b"1700000000:a", ["1"]])
    def test_non_strings(self, junk: object) -> None:
        assert parse_expiry(junk) is None  # type: ignore[arg-type]

    @given(st.text(max_size=600))
    def test_arbitrary_text_never_raises(self, text: str) -> None:
        result = parse_expiry(text)
        assert result is None or (isinstance(result, int) and result >= 0)

    @given(st.integers(0, 99_999_999_999), st.text(max_size=40))
    def test_round_trip(self, expiry: int, user: str) -> None:
        assert parse_expiry(f"{expiry}:{user}") == expiry
        assert parse_expiry(str(expiry)) == expiry


class TestIsCurrent:
    MINTER = CredentialMinter(["s"], max_ttl=3600)

    def test_window(self) -> None:
        cred = self.MINTER.mint("alice", 3600, NOW)
        assert self.MINTER.is_current(cred.username, NOW)
        assert self.MINTER.is_current(cred.username, cred.expires - 0.001)
        assert not self.MINTER.is_current(cred.username, cred.expires)
        assert not self.MINTER.is_current(cred.username, cred.expires + 1)

    def test_too_far_ahead_is_refused(self) -> None:
        # A millisecond timestamp cut to 11 digits, or a hand-made long-lived credential.
        assert not self.MINTER.is_current(f"{int(NOW) + 3600 + 61}:bob", NOW)
        assert self.MINTER.is_current(f"{int(NOW) + 3600 + 59}:bob", NOW)

    @pytest.mark.parametrize("username", ["alice", "", "1700000000000:bob", "x:1"])
    def test_non_rest_usernames(self, username: str) -> None:
        assert not self.MINTER.is_current(username, NOW)

    def test_nan_now(self) -> None:
        assert not self.MINTER.is_current(f"{int(NOW) + 60}:a", math.nan)


class TestStaticUsers:
    def test_mapping(self) -> None:
        users = StaticUsers({"alice": "pw1", "bob": "pw2"})
        assert users["alice"] == "pw1"
        assert len(users) == 2
        assert set(users) == {"alice", "bob"}
        assert "bob" in users
        assert users.password_for("bob") == "pw2"
        assert users.password_for("carol") is None
        assert users.password_for(None) is None  # type: ignore[arg-type]
        assert StaticUsers([("carol", "pw")]).password_for("carol") == "pw"
        assert len(StaticUsers()) == 0

    def test_repr_hides_passwords(self) -> None:
        text = repr(StaticUsers({"alice": "topsecret"}))
        assert "alice" in text
        assert "topsecret" not in text

    def test_immutable(self) -> None:
        users = StaticUsers({"alice": "pw"})
        with pytest.raises(TypeError):
            users["bob"] = "pw"  # type: ignore[index]
        with pytest.raises(AttributeError):
            users.extra = 1  # type: ignore[attr-defined]

    @pytest.mark.parametrize(
        ("pairs", "message"),
        [
            ([("1700000000:alice", "pw")], "REST API"),
            ([("12345", "pw")], "REST API"),
            ([("", "pw")], "empty"),
            ([("bad\nname", "pw")], "control"),
            ([("alice", "")], "empty password"),
            ([("alice", "a"), ("alice", "b")], "twice"),
        ],
    )
    def test_bad_entries(self, pairs: list[tuple[str, str]], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            StaticUsers(pairs)


def expected_nonce(key: bytes, now: float, client_ip: str, features: int = 0) -> str:
    """The documented nonce layout, built independently of the module."""
    stamp = int(now * 1000).to_bytes(6, "big")
    message = (
        b"secureconnect nonce v1\x00" + features.to_bytes(3, "big") + stamp + client_ip.encode()
    )
    mac = hmac.new(key, message, hashlib.sha256).digest()[:12]
    body = base64.urlsafe_b64encode(stamp + mac).decode()
    if not features:
        return body
    return "obMatJos2" + base64.b64encode(features.to_bytes(3, "big")).decode() + body


class TestNonce:
    MINT = NonceMint(KEY, lifetime=600.0, skew=2.0)

    def test_layout(self) -> None:
        nonce = self.MINT.issue(NOW, "192.0.2.1")
        assert nonce == expected_nonce(KEY, NOW, "192.0.2.1")
        assert len(nonce) == 24
        assert nonce.isascii()
        assert set(nonce) <= set(string.ascii_letters + string.digits + "-_")
        assert KEY.hex() not in nonce

    def test_round_trip(self) -> None:
        nonce = self.MINT.issue(NOW, "2001:db8::1")
        assert self.MINT.check(nonce, NOW, "2001:db8::1")
        assert self.MINT.check(nonce, NOW + 599.9, "2001:db8::1")
        assert self.MINT.check(nonce, NOW + 600.0, "2001:db8::1")

    def test_expiry(self) -> None:
        nonce = self.MINT.issue(NOW, "192.0.2.1")
        assert not self.MINT.check(nonce, NOW + 600.01, "192.0.2.1")
        assert not self.MINT.check(nonce, NOW + 10**6, "192.0.2.1")
        short = NonceMint(KEY, lifetime=1.0)
        assert short.lifetime == 1.0
        assert not short.check(short.issue(NOW, "a"), NOW + 1.5, "a")

    def test_future_timestamps(self) -> None:
        nonce = self.MINT.issue(NOW, "192.0.2.1")
        assert self.MINT.check(nonce, NOW - 1.9, "192.0.2.1")
        assert not self.MINT.check(nonce, NOW - 2.1, "192.0.2.1")
        assert not self.MINT.check(nonce, 0.0, "192.0.2.1")

    def test_wrong_client_ip(self) -> None:
        nonce = self.MINT.issue(NOW, "192.0.2.1")
        assert not self.MINT.check(nonce, NOW, "192.0.2.2")
        assert not self.MINT.check(nonce, NOW, "::ffff:192.0.2.1")
        assert not self.MINT.check(nonce, NOW, "")

    def test_other_keys(self) -> None:
        nonce = self.MINT.issue(NOW, "192.0.2.1")
        assert not NonceMint(bytes(32)).check(nonce, NOW, "192.0.2.1")
        assert not NonceMint.random().check(nonce, NOW, "192.0.2.1")
        # Workers sharing a port share the key, and so accept each other's nonces.
        assert NonceMint(KEY).check(nonce, NOW, "192.0.2.1")

    def test_random_keys_differ(self) -> None:
        first, second = NonceMint.random(), NonceMint.random()
        assert not second.check(first.issue(NOW, "a"), NOW, "a")
        assert first.check(first.issue(NOW, "a"), NOW, "a")

    @pytest.mark.parametrize("features", [0, 0x800000])
    def test_tampering_any_character_fails(self, features: int) -> None:
        nonce = self.MINT.issue(NOW, "192.0.2.1", features=features)
        alphabet = string.ascii_letters + string.digits + "-_+/"
        for index, char in enumerate(nonce):
            for replacement in {alphabet[(alphabet.index(char) + 1) % len(alphabet)], "A", "z"}:
                if replacement == char:
                    continue
                tampered = nonce[:index] + replacement + nonce[index + 1 :]
                assert not self.MINT.check(tampered, NOW, "192.0.2.1"), (index, tampered)

    def test_security_feature_cookie(self) -> None:
        nonce = self.MINT.issue(NOW, "192.0.2.1", features=0x800000)
        assert nonce == expected_nonce(KEY, NOW, "192.0.2.1", 0x800000)
        assert nonce.startswith(NONCE_COOKIE + "gAAA")
        assert len(nonce) < 128
        assert self.MINT.check(nonce, NOW, "192.0.2.1")
        # Stripping or rewriting the feature set (a bid-down) invalidates the nonce.
        assert not self.MINT.check(nonce[len(NONCE_COOKIE) + 4 :], NOW, "192.0.2.1")
        assert not self.MINT.check(NONCE_COOKIE + "AAAB" + nonce[13:], NOW, "192.0.2.1")
        # An all-zero feature set is never issued, so never accepted.
        plain = self.MINT.issue(NOW, "192.0.2.1")
        assert not self.MINT.check(NONCE_COOKIE + "AAAA" + plain, NOW, "192.0.2.1")

    @pytest.mark.parametrize(
        "junk",
        [
            "",
            "x",
            "obMatJos2",
            "obMatJos2gAAA",
            "obMatJos2g===" + "A" * 24,
            "A" * 23,
            "A" * 25,
            "A" * 24,
            "=" * 24,
            "A" * 22 + "==",
            " " + "A" * 23,
            "\u00e9" * 24,
            "A" * 10_000,
            "\x00" * 24,
        ],
    )
    def test_garbage_is_rejected(self, junk: str) -> None:
        assert not self.MINT.check(junk, NOW, "192.0.2.1")

    def test_padding_and_whitespace_variants_of_a_valid_nonce_are_rejected(self) -> None:
        nonce = self.MINT.issue(NOW, "192.0.2.1")
        for variant in (nonce + "=", nonce + "\n", " " + nonce, nonce.upper(), nonce[:-1]):
            assert not self.MINT.check(variant, NOW, "192.0.2.1")

    @pytest.mark.parametrize("junk", [None, b"AAAA", 12, ["a"]])
    def test_non_string_input(self, junk: object) -> None:
        assert not self.MINT.check(junk, NOW, "192.0.2.1")  # type: ignore[arg-type]
        nonce = self.MINT.issue(NOW, "192.0.2.1")
        assert not self.MINT.check(nonce, NOW, junk)  # type: ignore[arg-type]

    def test_non_finite_now_is_rejected(self) -> None:
        nonce = self.MINT.issue(NOW, "192.0.2.1")
        assert not self.MINT.check(nonce, math.nan, "192.0.2.1")
        assert not self.MINT.check(nonce, math.inf, "192.0.2.1")

    @given(st.text(max_size=200), st.text(max_size=50))
    def test_arbitrary_text_never_raises_or_passes(self, nonce: str, client_ip: str) -> None:
        assert self.MINT.check(nonce, NOW, client_ip) is False

    @given(
        st.floats(0, 2.0e9),
        st.text(max_size=45),
        st.integers(0, 2**24 - 1),
    )
    def test_any_issued_nonce_checks(self, now: float, client_ip: str, features: int) -> None:
        nonce = self.MINT.issue(now, client_ip, features=features)
        assert nonce.isascii()
        assert len(nonce) < 128
        assert self.MINT.check(nonce, now, client_ip)

    @pytest.mark.parametrize(
        ("now", "features"),
        [(math.nan, 0), (-1.0, 0), (math.inf, 0), (3e12, 0), (NOW, -1), (NOW, 1 << 24)],
    )
    def test_issue_rejects_bad_arguments(self, now: float, features: int) -> None:
        with pytest.raises(ValueError, match=r"now|features"):
            self.MINT.issue(now, "192.0.2.1", features=features)

    @pytest.mark.parametrize(
        ("key", "lifetime", "skew"),
        [(b"short", 600.0, 2.0), (KEY, 0.0, 2.0), (KEY, math.nan, 2.0), (KEY, 600.0, -1.0)],
    )
    def test_constructor_validation(self, key: bytes, lifetime: float, skew: float) -> None:
        with pytest.raises(ValueError, match="nonce"):
            NonceMint(key, lifetime, skew=skew)

    def test_repr_hides_the_key(self) -> None:
        assert KEY.hex() not in repr(self.MINT)
        assert repr(KEY) not in repr(self.MINT)
