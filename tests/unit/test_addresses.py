"""The address rule behind callback_url (and, later, a provider's base_url): addresses in,
public or not out. URLs here carry IP literals only, so nothing is looked up in DNS."""

from __future__ import annotations

import pytest

from aiintegration.commands.addresses import embedded_ipv4, is_public, parse_address, public_addresses
from aiintegration.errors import ValidationError

REFUSED = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "255.255.255.255", "240.0.0.1",
    "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1", "ff02::1", "2001:db8::1", "::7f00:1",
    # IPv6 that carries a private IPv4: judged by it
    "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "64:ff9b::7f00:1", "64:ff9b::a00:1", "64:ff9b::a9fe:a9fe",  # NAT64 of 127.0.0.1, 10.0.0.1, 169.254.169.254
    "2002:7f00:1::", "2002:a00:1::1", "2002:c0a8:101::",  # 6to4 of 127.0.0.1, 10.0.0.1, 192.168.1.1
    "64:ff9b:1::a00:1",  # local-use NAT64: where the IPv4 sits is the operator's choice
]
ALLOWED = [
    "8.8.8.8", "93.184.216.34", "2606:4700:4700::1111",
    "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_private_loopback_and_special_addresses_are_not_public(address):
    assert not is_public(parse_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_global_unicast_addresses_are_public(address):
    assert is_public(parse_address(address))


@pytest.mark.parametrize("address,inner", [("64:ff9b::7f00:1", "127.0.0.1"), ("64:ff9b::808:808", "8.8.8.8"),
                                           ("2002:7f00:1::", "127.0.0.1"), ("::ffff:10.0.0.1", "10.0.0.1"),
                                           ("2606:4700:4700::1111", None), ("8.8.8.8", None)])
def test_the_ipv4_inside_nat64_6to4_and_mapped_addresses_is_found(address, inner):
    found = embedded_ipv4(parse_address(address))
    assert (str(found) if found else None) == inner


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://[64:ff9b::7f00:1]/hook",
                                 "https://[2002:a00:1::]/x", "http://[::ffff:169.254.169.254]/latest"])
def test_a_url_with_a_private_address_is_refused_naming_the_field_and_the_setting(url):
    with pytest.raises(ValidationError) as refused:
        public_addresses(url, allow_private=False, field="base_url", setting="AII_PROVIDER_ALLOW_PRIVATE")
    assert "AII_PROVIDER_ALLOW_PRIVATE" in refused.value.details["base_url"]


def test_private_addresses_pass_when_allowed():
    assert public_addresses("http://[64:ff9b::7f00:1]:8080/hook", allow_private=True) == ["64:ff9b::7f00:1"]
    assert public_addresses("http://127.0.0.1/x", allow_private=True) == ["127.0.0.1"]


def test_a_public_literal_passes_and_is_returned_as_the_address_to_connect_to():
    assert public_addresses("https://[64:ff9b::808:808]/hook", allow_private=False) == ["64:ff9b::808:808"]


@pytest.mark.parametrize("url,why", [("ftp://8.8.8.8/x", r"http\(s\) URL"), ("http:///x", r"http\(s\) URL"),
                                     ("http://8.8.8.8:99999/x", "invalid port"), ("http://8.8.8.8:port/x", "invalid port")])
def test_urls_that_are_not_http_with_a_host_and_port_are_refused(url, why):
    with pytest.raises(ValidationError, match=why):
        public_addresses(url, allow_private=True, field="callback_url")
