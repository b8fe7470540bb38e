"""Sandboxed Jinja templates, rendering and MIME building.

``TemplateLibrary(folder, practice)`` validates every template in
``folder``; ``library.get(name).render(profile, profile_id=...,
tracking=...)`` returns ``RenderedContent``; ``build_message(content,
envelope)`` returns the RFC 5322 bytes to send. The shipped templates are
in ``library/`` and the synthetic sample profiles in ``samples.yaml``.
"""

from carepost.templates.errors import (
    HeaderInjectionError,
    RenderFailed,
    TemplateSpecError,
)
from carepost.templates.library import TemplateLibrary
from carepost.templates.links import Tracking
from carepost.templates.mime import Envelope, RenderedContent, build_message_email
from carepost.templates.rendering import MessageTemplate
from carepost.templates.wire import build_message

__all__ = [
    "Envelope",
    "HeaderInjectionError",
    "MessageTemplate",
    "RenderFailed",
    "RenderedContent",
    "TemplateLibrary",
    "TemplateSpecError",
    "Tracking",
    "build_message",
    "build_message_email",
]
