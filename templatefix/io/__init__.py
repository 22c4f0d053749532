"""Reading and writing models' chat templates: local files, model folders and the Hub.

- :mod:`templatefix.io.sources`: the one template loader (``load_source``, ``load_template``);
- :mod:`templatefix.io.layout`: where templates live in a model folder, read and written back
  byte-exact;
- :mod:`templatefix.io.files`: the one atomic writer;
- :mod:`templatefix.io.hub`: the Hub through huggingface_hub's own APIs;
- :mod:`templatefix.io.pr`: pull-request text and its idempotency marker.
"""

from __future__ import annotations

from templatefix.io.files import atomic_stream, atomic_write, write_files, write_in_place
from templatefix.io.layout import TemplateEntry, TemplateSet
from templatefix.io.sources import LoadedSource, LoadedTemplate, load_source, load_template

__all__ = [
    "LoadedSource",
    "LoadedTemplate",
    "TemplateEntry",
    "TemplateSet",
    "atomic_stream",
    "atomic_write",
    "load_source",
    "load_template",
    "write_files",
    "write_in_place",
]
