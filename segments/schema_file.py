"""Generate ``segments/schema.json`` from the spec model.

Editors that speak the YAML language server read the ``$schema`` comment
at the top of each spec and use this file for completion and inline
errors. Regenerate it after changing ``spec.py``:

    python -m carepost.segments.schema_file

A test fails while the committed file differs from the generated text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from carepost.segments.spec import SegmentSpec

SCHEMA_PATH = Path(__file__).with_name("schema.json")


def render_schema() -> str:
    """Return the JSON schema of a spec file as stable, indented text."""
    schema = SegmentSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "carepost segment spec"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    """Write the schema next to this module; return the exit status."""
    SCHEMA_PATH.write_text(render_schema(), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
