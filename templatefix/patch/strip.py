"""Existing markers: find ``{% generation %}`` tags and remove them without changing the render.

Example:
    >>> has_markers("{% generation %}{{ x }}{% endgeneration %}")
    True
    >>> strip_generation_markers("a{% generation %}b{% endgeneration %}c")
    'abc'
"""

from __future__ import annotations

import re

from templatefix.errors import RenderError, RenderLimitExceeded
from templatefix.source import Edit, TemplateSource

_GENERATION_TAG = re.compile(r"\{%[-+]?\s*(?:end)?generation\s*[-+]?%\}")


def has_markers(template: str) -> bool:
    """Whether ``template`` holds a ``generation``/``endgeneration`` tag (a quick textual test)."""
    return bool(_GENERATION_TAG.search(template))


def strip_generation_markers(template: str) -> str:
    """Remove ``{% generation %}``/``{% endgeneration %}`` tags, keeping the render identical.

    Tried in order, the first that renders like the input wins: drop each tag's whole line when
    the tag stands alone on it (the cleanest diff); drop just the tags; replace them by
    equivalent comments (``{#- -#}``), which keep their whitespace control.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
        RenderLimitExceeded: a probe render went past its bound.
    """
    source = TemplateSource.parse(template)
    line_edits: list[Edit] = []
    edits: list[Edit] = []
    comment_edits: list[Edit] = []
    for begin, end in _generation_tag_tokens(source):
        start, stop = source.tokens[begin].start, source.tokens[end].end
        tag = template[start:stop]
        edits.append(Edit(start, stop, ""))
        line_start = template.rfind("\n", 0, start) + 1
        alone = not template[line_start:start].strip() and tag.endswith("\n")
        line_edits.append(Edit(line_start if alone else start, stop, ""))
        left = "-" if tag.startswith("{%-") else ""
        right = "-" if tag.rstrip().rstrip("%}").rstrip().endswith("-") else ""
        comment_edits.append(Edit(start, stop, f"{{#{left} {right}#}}" if left or right else ""))
    for candidate_edits in (line_edits, edits):
        candidate = source.apply(candidate_edits)
        if _renders_like(candidate, template):
            return candidate
    return source.apply(comment_edits)


def _generation_tag_tokens(source: TemplateSource) -> list[tuple[int, int]]:
    """Token index ranges of each generation/endgeneration tag."""
    found = []
    tokens = source.tokens
    for index, token in enumerate(tokens):
        if token.kind == "name" and token.text in ("generation", "endgeneration"):
            begin = index - 1
            while begin >= 0 and tokens[begin].kind == "whitespace":
                begin -= 1
            end = index + 1
            while end < len(tokens) and tokens[end].kind == "whitespace":
                end += 1
            if (
                begin >= 0
                and tokens[begin].kind == "block_begin"
                and end < len(tokens)
                and tokens[end].kind == "block_end"
            ):
                found.append((begin, end))
    return found


def _renders_like(candidate: str, reference: str) -> bool:
    """Whether ``candidate`` renders every probe of ``reference``'s battery as ``reference`` does."""
    from templatefix.probes import probe_battery
    from templatefix.render import render

    for probe in probe_battery(reference):
        for generation_prompt in (False, True):
            try:
                expected = render(
                    reference, probe.messages, add_generation_prompt=generation_prompt, **probe.kwargs
                )
            except RenderLimitExceeded:
                raise
            except RenderError:
                continue
            try:
                if (
                    render(candidate, probe.messages, add_generation_prompt=generation_prompt, **probe.kwargs)
                    != expected
                ):
                    return False
            except RenderLimitExceeded:
                raise
            except RenderError:
                return False
    return True
