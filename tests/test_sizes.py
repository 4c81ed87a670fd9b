"""The package-wide size rule (ibllm_agent.sizes): GB = 10^9, GiB = 2^30."""

from __future__ import annotations

import pytest

from ibllm_agent.errors import ConfigError
from ibllm_agent.sizes import parse_size


def test_decimal_and_binary_units():
    assert parse_size("4GiB") == 4 * 2**30
    assert parse_size("4G") == parse_size("4GB") == parse_size("4 gb") == 4 * 10**9
    assert parse_size("512MiB") == 512 * 2**20 and parse_size("512MB") == 512 * 10**6
    assert parse_size("1.5gb") == 1_500_000_000 and parse_size("2KiB") == 2048 and parse_size("1TiB") == 2**40
    assert parse_size("1000") == parse_size("1000B") == 1000 and parse_size(7) == 7 and parse_size(2.5e9) == 2_500_000_000
    assert parse_size(None) is None


@pytest.mark.parametrize("bad", ["4 parsecs", "GB", "-1GB", "1e9", ""])
def test_unreadable_sizes_are_config_errors(bad):
    with pytest.raises(ConfigError, match="invalid memory budget"):
        parse_size(bad, what="memory budget")


def test_negative_numbers_refused():
    with pytest.raises(ConfigError, match=">= 0"):
        parse_size(-5)


def test_format_size_decimal_and_binary():
    from ibllm_agent.sizes import format_size

    assert format_size(4_800_000_000) == "4.8 GB" and format_size(4 * 2**30, binary=True) == "4.0 GiB"
    assert format_size(999) == "999 B" and format_size(1536, binary=True) == "1.5 KiB"
    assert format_size(None) == "?" and format_size(None, unknown="-") == "-"
    assert format_size(3 * 10**15) == "3000.0 TB"
    assert parse_size(format_size(12_300_000_000).replace(" ", "")) == 12_300_000_000
