"""Existing markers: find ``{% generation %}`` tags and remove them without changing the render.

Example:
    >>> strip_generation_markers("a{% generation %}b{% endgeneration %}c")
    'abc'
"""

from __future__ import annotations

from templatefix.errors import RenderError, RenderLimitExceeded
from templatefix.jinja.markers import find_markers
from templatefix.source import Edit
from templatefix.template import ChatTemplate


def strip_generation_markers(template: ChatTemplate | str) -> str:
    """Remove ``{% generation %}``/``{% endgeneration %}`` tags, keeping the render identical.

    Tried in order, the first that renders like the input wins: drop each tag's whole line when
    the tag stands alone on it (the cleanest diff); drop just the tags; replace them by
    equivalent comments (``{#- -#}``), which keep their whitespace control.

    Raises:
        TemplateSyntaxError: the template is not valid Jinja.
        RenderLimitExceeded: a probe render went past its bound.
    """
    parsed = ChatTemplate.of(template)
    source, template = parsed.source, parsed.text
    line_edits: list[Edit] = []
    edits: list[Edit] = []
    comment_edits: list[Edit] = []
    for start, stop in find_markers(source):
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
        if _renders_like(candidate, parsed):
            return candidate
    return source.apply(comment_edits)


def _renders_like(candidate: str, reference: ChatTemplate) -> bool:
    """Whether ``candidate`` renders every probe of ``reference``'s battery as ``reference`` does."""
    from templatefix.oracle import remembered_render
    from templatefix.probes import probe_battery

    for probe in probe_battery(reference):
        messages, kwargs = probe.messages, probe.kwargs
        for generation_prompt in (False, True):
            try:
                expected = remembered_render(reference.text, messages, kwargs, generation_prompt, None)
            except RenderLimitExceeded:
                raise
            except RenderError:
                continue
            try:
                if remembered_render(candidate, messages, kwargs, generation_prompt, None) != expected:
                    return False
            except RenderLimitExceeded:
                raise
            except RenderError:
                return False
    return True
