"""Sandboxed Jinja templates, rendering and MIME building.

``TemplateLibrary(folder, practice)`` validates every template in
``folder``; ``library.get(name).render(profile, profile_id=...)`` returns
``RenderedContent``; ``build_message(content, envelope)`` returns the
RFC 5322 bytes to send. The shipped templates are in ``library/``.
"""

from carepost.templates.errors import (
    HeaderInjectionError,
    RenderFailed,
    TemplateSpecError,
)
from carepost.templates.library import TemplateLibrary
from carepost.templates.mime import Envelope, RenderedContent, build_message
from carepost.templates.rendering import MessageTemplate

__all__ = [
    "Envelope",
    "HeaderInjectionError",
    "MessageTemplate",
    "RenderFailed",
    "RenderedContent",
    "TemplateLibrary",
    "TemplateSpecError",
    "build_message",
]
