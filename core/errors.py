"""Root of carepost's exception tree.

    CarepostError
    ├── ConfigError            carepost.yaml or a campaign file is invalid
    ├── connectors: SourceError, SinkError
    ├── segments:   SegmentSpecError (file, line, key path)
    ├── templates:  TemplateSpecError, RenderFailed (profile id, field)
    └── sender:     TransportError (SMTP code, profile id)

Messages carry ids, file names and key paths, never PHI or an address.
"""

from __future__ import annotations


class CarepostError(Exception):
    """Base class; ``hint`` tells the user what to do next."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigError(CarepostError):
    """The project configuration or a campaign file is invalid."""
