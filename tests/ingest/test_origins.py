"""Which client a request is charged to: the address from the peer and ``X-Forwarded-For``, the origin network
it belongs to, and the keyed hash that is all quotas ever keep of it. Pure rules, and the endpoints on fakes."""

import ipaddress
import json

import pytest

from services.ingest.domain import client_address, origin_key, origin_network, parse_hop
from services.ingest.settings import IngestSettings
from shared.settings import ConfigError, load_settings
from tests.ingest.bodies import bulk_body, icon_item
from tests.ingest.conftest import CLIENT_ADDRESS, memory_ingest

PROXIES = [ipaddress.ip_network("10.0.0.0/8")]
SECRET = b"k" * 32
FAST, FASTAPI = "application/json", "application/vnd.warp+json"  # the fast path takes only the first


def address(text: str):
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("hop", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        (" 203.0.113.9:51234 ", "203.0.113.9"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:203.0.113.9", "203.0.113.9"),  # IPv4 through a dual-stack socket
        ("fe80::1%eth0", "fe80::1"),
        ("203.0.113.9:", None),
        ("203.0.113.9:http", None),
        ("[2001:db8::1]443", None),
        ("[2001:db8::1", None),
        ("unknown", None),
        ("", None),
    ],
)
def test_a_hop_is_an_address_with_or_without_its_port(hop, expected):
    assert parse_hop(hop) == (None if expected is None else address(expected))


@pytest.mark.parametrize(
    ("peer", "lines", "expected"),
    [
        ("198.51.100.1", ["203.0.113.9"], "198.51.100.1"),  # untrusted peer: the header is ignored
        ("10.0.0.5", ["203.0.113.9"], "203.0.113.9"),
        ("10.0.0.5", ["1.2.3.4, 203.0.113.9, 10.0.0.6"], "203.0.113.9"),  # right-most untrusted hop
        # a proxy that adds its own line after the client's: the client's line must not choose
        ("10.0.0.5", ["1.2.3.4", "203.0.113.9"], "203.0.113.9"),
        ("10.0.0.5", ["1.2.3.4, 5.6.7.8", "203.0.113.9, 10.0.0.6"], "203.0.113.9"),
        ("10.0.0.5", ["203.0.113.9:51234"], "203.0.113.9"),  # a hop with its port is still the client
        ("10.0.0.5", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("::ffff:10.0.0.5", ["203.0.113.9"], "203.0.113.9"),  # a mapped proxy address is still trusted
        ("10.0.0.5", ["garbage"], "10.0.0.5"),
        ("10.0.0.5", [" , "], "10.0.0.5"),
        ("10.0.0.5", [], "10.0.0.5"),
    ],
)
def test_forwarded_for_is_read_across_lines_only_from_a_trusted_peer(peer, lines, expected):
    assert client_address(peer, lines, PROXIES) == address(expected)


@pytest.mark.parametrize(
    ("lines", "hops", "expected"),
    [
        (["1.2.3.4, 203.0.113.9"], 1, "203.0.113.9"),
        # two proxies: the outer one appended the client, the inner one the outer proxy (also outside 10/8)
        (["1.2.3.4, 203.0.113.9, 192.0.2.50"], 2, "203.0.113.9"),
        (["1.2.3.4", "203.0.113.9:40000, 192.0.2.50"], 2, "203.0.113.9"),
        (["203.0.113.9"], 2, "203.0.113.9"),  # fewer hops than proxies: all of them proxy-written
        (["1.2.3.4, junk"], 1, "10.0.0.5"),
    ],
)
def test_with_a_hop_count_the_client_is_that_many_hops_from_the_right(lines, hops, expected):
    assert client_address("10.0.0.5", lines, PROXIES, proxy_hops=hops) == address(expected)


def test_no_peer_is_no_address():
    assert client_address(None, ["203.0.113.9"], PROXIES) is None


def origin(text: str, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    return origin_key(origin_network(address(text), ipv4_prefix, ipv6_prefix), SECRET)


def test_one_ipv6_64_is_one_origin_and_an_ipv4_address_is_one():
    assert origin("2001:db8:1:2::1") == origin("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert origin("2001:db8:1:2::1") != origin("2001:db8:1:3::1")
    assert origin("203.0.113.9") != origin("203.0.113.10")


def test_prefix_lengths_are_parameters():
    assert origin_network(address("203.0.113.9"), 24, 64) == ipaddress.ip_network("203.0.113.0/24")
    assert origin("203.0.113.9", ipv4_prefix=24) == origin("203.0.113.200", ipv4_prefix=24)
    assert origin("2001:db8:1:2::1", ipv6_prefix=48) == origin("2001:db8:1:ffff::1", ipv6_prefix=48)
    assert origin("2001:db8:1:2::1", ipv6_prefix=128) != origin("2001:db8:1:2::2", ipv6_prefix=128)


def test_the_origin_key_is_a_keyed_hash_that_does_not_show_the_address():
    network = origin_network(address("203.0.113.9"), 32, 64)
    key = origin_key(network, SECRET)
    assert len(key) == 64 and set(key) <= set("0123456789abcdef")
    assert key == origin_key(network, SECRET)
    assert key != origin_key(network, b"another secret of thirty-two ch.")
    assert origin_key(None, SECRET) != key


def test_origin_settings_fail_fast_with_the_variable(monkeypatch):
    monkeypatch.setenv("WARP_ORIGIN_SECRET", "short")
    with pytest.raises(ConfigError, match="WARP_ORIGIN_SECRET"):
        load_settings(IngestSettings)
    monkeypatch.delenv("WARP_ORIGIN_SECRET")
    monkeypatch.setenv("WARP_TRUSTED_PROXY_HOPS", "1")
    with pytest.raises(ConfigError, match="WARP_TRUSTED_PROXY_HOPS"):
        load_settings(IngestSettings)
    monkeypatch.setenv("WARP_TRUSTED_PROXIES", "10.0.0.0/8")
    assert load_settings(IngestSettings).trusted_proxy_hops == 1


# --- the endpoints: what the quota is counted under -----------------------------------------------------------


def origins_counted(memory) -> set[str]:
    return {subject for scope, subject, _ in memory.limiter.counts if scope == "ip"}


@pytest.mark.parametrize("content_type", [FAST, FASTAPI])
async def test_quotas_count_the_keyed_hash_of_the_client_never_its_address(content_type):
    content = json.dumps(bulk_body([icon_item(1)]))
    # the test client's peer is CLIENT_ADDRESS (203.0.113.7); as a trusted proxy, its second header line counts
    headers = [
        ("content-type", content_type),
        ("x-forwarded-for", "198.51.100.1"),
        ("x-forwarded-for", "2001:db8:5:6::7:9000"),
        ("x-forwarded-for", "[2001:db8:5:6::8]:51234"),
    ]
    async with memory_ingest(trusted_proxies="203.0.113.0/24", origin_secret=SECRET.decode()) as memory:
        response = await memory.client.post("/contribute/bulk-crops", content=content, headers=headers)
        assert response.status_code == 200
        # the right-most hop outside the trusted network, counted by its /64
        assert origins_counted(memory) == {origin("2001:db8:5:6::1")}
        assert not any("2001" in subject or "198.51" in subject for _, subject, _ in memory.limiter.counts)


@pytest.mark.parametrize("content_type", [FAST, FASTAPI])
async def test_forwarded_for_is_ignored_from_an_untrusted_peer(content_type):
    content = json.dumps(bulk_body([icon_item(1)]))
    headers = {"X-Forwarded-For": "198.51.100.77", "content-type": content_type}
    async with memory_ingest(origin_secret=SECRET.decode()) as memory:
        response = await memory.client.post("/contribute/bulk-crops", content=content, headers=headers)
        assert response.status_code == 200
        assert origins_counted(memory) == {origin(CLIENT_ADDRESS)}


async def test_the_clients_of_one_64_share_one_quota():
    settings = dict(trusted_proxies="203.0.113.0/24", ip_daily_limit=2)
    async with memory_ingest(**settings) as memory:
        codes = []
        for n, client in enumerate(("2001:db8:5:6::1", "2001:db8:5:6::2", "2001:db8:5:6:ffff::3")):
            body = bulk_body([icon_item(n)], install_id=f"install-{n:04d}")
            answer = await memory.client.post(
                "/contribute/bulk-crops", json=body, headers={"X-Forwarded-For": client}
            )
            codes.append(answer.status_code)
        assert codes == [200, 200, 429]
        assert answer.json()["scope"] == "ip" and answer.json()["limit"] == 2
        other = await memory.client.post(
            "/contribute/bulk-crops",
            json=bulk_body([icon_item(9)], install_id="install-0009"),
            headers={"X-Forwarded-For": "2001:db8:5:7::1"},
        )
        assert other.status_code == 200


async def test_without_a_secret_each_start_keys_origins_afresh():
    async with memory_ingest() as first, memory_ingest() as second:
        assert first.runtime.origin(CLIENT_ADDRESS, []) == first.runtime.origin(CLIENT_ADDRESS, [])
        assert first.runtime.origin(CLIENT_ADDRESS, []) != second.runtime.origin(CLIENT_ADDRESS, [])


async def test_each_event_carries_the_keyed_hash_of_its_24_or_64_and_never_the_address():
    """One voice per network in consensus: the clients of one /24 (or /64) share it, another /24 has its own."""
    settings = dict(trusted_proxies="203.0.113.0/24", origin_secret=SECRET.decode())
    clients = ("198.51.100.7", "198.51.100.200", "198.51.101.7", "2001:db8:5:6::1", "2001:db8:5:6:ffff::3")
    async with memory_ingest(**settings) as memory:
        for n, client in enumerate(clients):
            body = bulk_body([icon_item(n)], install_id=f"install-{n:04d}")
            answer = await memory.client.post(
                "/contribute/bulk-crops", json=body, headers={"X-Forwarded-For": client}
            )
            assert answer.status_code == 200
        voices = [event.origin for event in memory.publisher.published]
    assert voices[0] == voices[1] != voices[2] and voices[3] == voices[4] != voices[0]
    assert voices[0] == origin_key(ipaddress.ip_network("198.51.100.0/24"), SECRET)
    for event, client in zip(memory.publisher.published, clients, strict=True):
        assert client not in event.model_dump_json()
