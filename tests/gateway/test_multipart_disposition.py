"""A part's Content-Disposition is read directly in its plain form (multipart.parse_disposition)
only when that gives exactly what python-multipart's parse_options_header gives. Checked against
it on generated values: plain, and with what clients and attackers put in them (quotes,
escapes, `;` and `=` inside values, filename*, Windows paths, other kinds and spacing)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from python_multipart.multipart import parse_options_header

from services.gateway.multipart import _PLAIN_DISPOSITION, parse_disposition

VALUE_CHARS = st.sampled_from([*'abcXYZ019 _-.$#"\\;=*:/é\t', "ü", "\x7f"])
values = st.text(VALUE_CHARS, max_size=12)
quoted = values.map(lambda v: f'"{v}"')
kinds = st.sampled_from(["form-data", "Form-Data", "form-data ", "attachment", "form-data;", ""])
separators = st.sampled_from(["; ", ";", " ; ", ";  ", "; \t"])
keys = st.sampled_from(["name", "filename", "Name", "filename*", "name*", "other", "name "])


@st.composite
def dispositions(draw: st.DrawFn) -> str:
    if draw(st.booleans()):  # the plain form, with odd values
        value = f'form-data; name="{draw(values)}"'
        if draw(st.booleans()):
            value += f'; filename="{draw(values)}"'
        return value
    out = draw(kinds)
    for _ in range(draw(st.integers(0, 3))):
        out += draw(separators) + draw(keys) + "=" + draw(st.one_of(quoted, values))
    return out


@settings(max_examples=1500, deadline=None)
@given(dispositions())
def test_reads_every_value_as_the_parser_does(value: str) -> None:
    assert parse_disposition(value) == parse_options_header(value)


def test_what_clients_send_takes_the_direct_path() -> None:
    """(else the test above compares the parser with itself)"""
    for value in ['form-data; name="workflow_json"; filename="w.json"', 'form-data; name="$prompt"',
                  'form-data; name="#size"', 'form-data; name="photo"; filename="in.png"']:
        assert _PLAIN_DISPOSITION.fullmatch(value), value
        assert parse_disposition(value) == parse_options_header(value)


def test_windows_paths_and_escapes_go_to_the_parser() -> None:
    for value in ['form-data; name="f"; filename="C:\\\\x\\\\in.png"', 'form-data; name="a\\"b"',
                  'form-data; name="a;b"', "form-data; name=unquoted"]:
        assert not _PLAIN_DISPOSITION.fullmatch(value), value
        assert parse_disposition(value) == parse_options_header(value)
