"""Template sandbox escapes through str.format and through profile data.

Attribute walks (``cycler.__init__.__globals__``, ``''.__class__.__mro__``,
``attr('__class__')``) are covered in tests/templates/test_template_security.py;
these are the format-string tricks and template text arriving as data.
"""

from __future__ import annotations

import pytest

from carepost.core.phi import PHI
from carepost.templates import RenderFailed, TemplateSpecError

from .conftest import MESSAGE, WriteTemplate

FORMAT_TRICKS = [
    '{{ "{0.__class__}".format(first_name) }}\n',
    '{{ "{0.__class__.__init__.__globals__}".format(first_name) }}\n',
    '{{ "{0.__class__}".format_map({"x": first_name}) }}\n',
    '{{ "%s" | format(first_name.__class__) }}\n',
]


@pytest.mark.parametrize("body", FORMAT_TRICKS)
def test_format_trick_never_renders_internals(write_template: WriteTemplate,
                                              body: str) -> None:
    try:
        library = write_template(body)
    except TemplateSpecError:
        return  # rejected when the template is loaded, as it should be
    with pytest.raises(RenderFailed) as caught:
        library.get("probe").render({"first_name": PHI("Sam"), **MESSAGE},
                                    profile_id="p-format")
    assert "p-format" in str(caught.value)
    assert "Sam" not in str(caught.value)


def test_profile_value_as_format_string(write_template: WriteTemplate) -> None:
    """A first name such as ``{0.__class__...}`` used as a format string."""
    try:
        library = write_template("<p>{{ first_name.format(practice) }}</p>\n")
    except TemplateSpecError:
        return
    value = PHI("{0.__class__.__init__.__globals__}")
    try:
        content = library.get("probe").render({"first_name": value, **MESSAGE},
                                              profile_id="p-fmt")
    except RenderFailed as exc:
        assert "p-fmt" in str(exc)
        return
    assert "<class" not in content.html
    assert "function" not in content.html


@pytest.mark.parametrize("value", [
    "{{ 7 * 7 }}",
    "{0.__class__.__init__.__globals__}",
    "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
])
def test_template_text_in_profile_is_data(write_template: WriteTemplate,
                                          value: str) -> None:
    library = write_template("<p>Hi {{ first_name }}</p>\n")
    content = library.get("probe").render({"first_name": PHI(value), **MESSAGE},
                                          profile_id="p-data")
    assert "49" not in content.html
    assert "<class" not in content.html
    assert "function" not in content.html
