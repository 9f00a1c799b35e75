"""Pure rules behind the API: header masking, endpoint URLs, tier limits files."""

from __future__ import annotations

import pytest

from services.scheduler.core.runner_fields import check_endpoint, mask
from services.scheduler.core.tiers import DEFAULT_LIMITS, LimitsFileError, parse_limits
from services.scheduler.errors import InvalidArgument


@pytest.mark.parametrize(("value", "shown"), [
    ("Bearer abc.def", "Bearer ****"), ("Basic dXNlcjpwdw==", "Basic ****"), ("abc123", "****"),
    ("", "****"), ("Bearer", "****"), ("two words here", "two ****"),
])
def test_header_values_are_masked_keeping_only_a_scheme_word(value: str, shown: str) -> None:
    assert mask(value) == shown


@pytest.mark.parametrize("endpoint", ["http://10.0.0.1:8188", "https://comfy.example.com/base", "http://[::1]:80"])
def test_http_and_https_urls_with_a_host_are_endpoints(endpoint: str) -> None:
    assert check_endpoint(f" {endpoint} ") == endpoint


@pytest.mark.parametrize("endpoint", ["", "comfy.example.com", "ftp://h", "http://", "http://h:70000",
                                      "http://h x", "http://[::1", "https://h/\x00"])
def test_anything_else_is_refused(endpoint: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid endpoint URL format"):
        check_endpoint(endpoint)


def test_a_limits_file_overrides_only_what_it_names() -> None:
    limits = parse_limits("[free]\nrunners = 7\n[pro]\ntemplates = 0\n")
    assert limits["free"].runners == 7 and limits["free"].templates == DEFAULT_LIMITS["free"].templates
    assert limits["pro"].templates == 0 and limits["plus"] == DEFAULT_LIMITS["plus"]


@pytest.mark.parametrize(("text", "message"), [
    ("[gold]\nrunners = 1", "unknown tier 'gold'"),
    ("[free]\nworkers = 1", "unknown limit 'workers' for tier free"),
    ("[free]\nrunners = -1", "limit free.runners must be an integer >= 0"),
    ("[free]\nrunners = true", "limit free.runners must be an integer >= 0"),
    ("[free", "not valid TOML"),
])
def test_a_bad_limits_file_is_an_error_at_start(text: str, message: str) -> None:
    with pytest.raises(LimitsFileError, match=message):
        parse_limits(text)
