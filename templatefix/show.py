"""See what training will learn: every token, coloured trained or not (``templatefix show``).

The mask shown is transformers' own ``assistant_masks`` (what TRL trains with
``assistant_only_loss=True``); token text comes from the tokenizer's offsets, so the tokens
concatenate back to the exact rendered text.

Example:
    >>> view = build_view(template, tokenizer, EXAMPLE_MESSAGES, tools=EXAMPLE_TOOLS)  # doctest: +SKIP
    >>> f"{view.trained}/{view.total}"  # doctest: +SKIP
    '61/212'
    >>> open("view.html", "w").write(render_html(view))  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from templatefix.clock import frozen_clock, transformers_clock
from templatefix.errors import RenderError, SourceError, TemplatefixError
from templatefix.masks.issues import TokenIssue, diagnose
from templatefix.render import render, render_with_spans
from templatefix.tokens import normalize_messages, require_fast, special_tokens_of

EXAMPLE_TOOLS: list[dict[str, Any]] = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}]

#: Built-in conversation: system message, reasoning, a tool call and its result, two answers.
EXAMPLE_MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {
        "role": "assistant",
        "reasoning_content": "The user wants the weather; I should call get_weather.",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ],
    },
    {"role": "tool", "name": "get_weather", "content": '{"temperature": 21, "sky": "sunny"}'},
    {"role": "assistant", "content": "It is sunny and 21°C in Paris."},
    {"role": "user", "content": "Thanks!\nAnd tomorrow?"},
    {
        "role": "assistant",
        "reasoning_content": "I have no forecast tool.",
        "content": "I can only see the current weather, sorry.",
    },
]


@dataclass(frozen=True)
class TokenCell:
    """One token: its index and id, its exact characters, whether it is trained / special, and
    the message it falls in (``None`` when the render cannot be split by message). ``dropped``
    holds characters before the token that no token covers (whitespace some tokenizers drop)."""

    index: int
    token_id: int
    text: str
    trained: bool
    special: bool
    message: int | None
    dropped: str = ""


@dataclass(frozen=True)
class TurnCount:
    """Token counts for one message (or ``role == "(rest)"`` for text outside any message)."""

    message: int | None
    role: str
    trained: int
    total: int


@dataclass
class MaskView:
    """Everything ``show`` displays."""

    text: str
    tokens: list[TokenCell]
    turns: list[TurnCount]
    issues: list[TokenIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    title: str = ""
    trailing: str = ""  # characters after the last token that no token covers

    @property
    def trained(self) -> int:
        return sum(cell.trained for cell in self.tokens)

    @property
    def total(self) -> int:
        return len(self.tokens)


# --------------------------------------------------------------------------- building


def _message_boundaries(
    template: str, messages: Sequence[Mapping[str, Any]], text: str, special: Mapping[str, Any], kwargs: dict
) -> list[int | None]:
    """End character of each message in ``text`` when the render of the first k+1 messages is a
    prefix of it; ``None`` where it is not (history the template rewrites, or rejects)."""
    ends: list[int | None] = []
    for count in range(1, len(messages) + 1):
        try:
            prefix = text if count == len(messages) else render(
                template, messages[:count], special_tokens=special, **kwargs
            )
        except RenderError:
            ends.append(None)
            continue
        ends.append(len(prefix) if text.startswith(prefix) else None)
    return ends


@frozen_clock()  # the render and apply_chat_template see one moment for strftime_now
def build_view(
    template: str, tokenizer: Any, messages: Sequence[Mapping[str, Any]], **template_kwargs: Any
) -> MaskView:
    """Tokenize ``messages`` with ``template`` through transformers and collect the mask per token.

    Raises:
        TemplatefixError: slow tokenizer; RenderError / TemplateRejected from the template.
    """
    require_fast(tokenizer)
    messages = normalize_messages(messages)
    special = special_tokens_of(tokenizer)
    text, raw_spans = render_with_spans(template, messages, special_tokens=special, **template_kwargs)
    with transformers_clock():
        out = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=True, return_dict=True,
            return_assistant_tokens_mask=True, **template_kwargs,
        )
    ids = list(out["input_ids"])
    mask = list(out["assistant_masks"])
    encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    offsets = [tuple(pair) for pair in encoding["offset_mapping"]]
    view = MaskView(text=text, tokens=[], turns=[])
    if list(encoding["input_ids"]) != ids:
        raise TemplatefixError(
            "apply_chat_template's tokens differ from the rendered text's: cannot align tokens"
        )
    view.issues = diagnose(text, raw_spans, offsets, mask)

    special_ids = set(getattr(tokenizer, "all_special_ids", []))
    for token_id, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            special_ids.add(token_id)

    ends = _message_boundaries(template, messages, text, special, dict(template_kwargs))
    known = [(end, number) for number, end in enumerate(ends) if end is not None]
    previous_end = 0
    cursor = 0
    for index, ((start, end), token_id) in enumerate(zip(offsets, ids, strict=True)):
        dropped = text[previous_end:start] if start > previous_end else ""
        piece = text[max(start, previous_end):end]
        previous_end = max(previous_end, end)
        while cursor < len(known) and known[cursor][0] <= start:
            cursor += 1
        message = known[cursor][1] if cursor < len(known) else None
        cell = TokenCell(index, token_id, piece, bool(mask[index]), token_id in special_ids, message, dropped)
        view.tokens.append(cell)
    view.trailing = text[previous_end:]

    counts: dict[int | None, list[int]] = {}
    for cell in view.tokens:
        entry = counts.setdefault(cell.message, [0, 0])
        entry[0] += cell.trained
        entry[1] += 1
    for number, (trained, total) in sorted(counts.items(), key=lambda item: (item[0] is None, item[0] or 0)):
        if number is None:
            view.turns.append(TurnCount(None, "(rest)", trained, total))
            continue
        roles = [str(messages[i].get("role", "?")) for i in range(_group_start(ends, number), number + 1)]
        view.turns.append(TurnCount(number, "+".join(dict.fromkeys(roles)), trained, total))
    return view


def build_text_view(
    template: str, messages: Sequence[Mapping[str, Any]], **template_kwargs: Any
) -> MaskView:
    """The same view without a tokenizer: one cell per run of characters inside or outside the
    spans (cut at message boundaries), so the trained text can be seen for a template alone.

    Raises:
        RenderError / TemplateRejected: from the template.

    Example:
        >>> template = ("{% for m in messages %}{{ m.role }}: {% if m.role == 'assistant' %}"
        ...             "{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}"
        ...             "{% endif %}\\n{% endfor %}")
        >>> view = build_text_view(template, [{"role": "user", "content": "hi"},
        ...                                   {"role": "assistant", "content": "hello"}])
        >>> [cell.text for cell in view.tokens if cell.trained]
        ['hello']
    """
    messages = normalize_messages(messages)
    text, raw_spans = render_with_spans(template, messages, **template_kwargs)
    inside = [False] * len(text)
    for start, end in raw_spans:
        for index in range(max(start, 0), min(end, len(text))):
            inside[index] = True
    ends = _message_boundaries(template, messages, text, {}, dict(template_kwargs))
    cuts = sorted({0, len(text), *(end for end in ends if end is not None)})
    cuts += [i for i in range(1, len(text)) if inside[i] != inside[i - 1]]
    cuts = sorted(set(cuts))
    view = MaskView(text=text, tokens=[], turns=[])
    known = [(end, number) for number, end in enumerate(ends) if end is not None]
    counts: dict[int | None, list[int]] = {}
    for index, (start, end) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        message = next((number for last, number in known if start < last), None)
        cell = TokenCell(index, -1, text[start:end], inside[start], False, message)
        view.tokens.append(cell)
        entry = counts.setdefault(message, [0, 0])
        entry[0] += (end - start) if cell.trained else 0
        entry[1] += end - start
    for number, (trained, total) in sorted(counts.items(), key=lambda item: (item[0] is None, item[0] or 0)):
        role = "(rest)" if number is None else str(messages[number].get("role", "?"))
        view.turns.append(TurnCount(number, role, trained, total))
    view.notes.append("no tokenizer: characters are shown in runs inside / outside the spans, not tokens")
    return view


def _group_start(ends: list[int | None], number: int) -> int:
    """First message of the group ending at ``number`` (messages without a boundary join the next)."""
    start = number
    while start > 0 and ends[start - 1] is None:
        start -= 1
    return start


# --------------------------------------------------------------------------- inputs


def load_conversation(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read a conversation file: a JSON list of messages, or an object with ``messages`` (and
    optionally ``tools``, ``documents`` and other template arguments).

    Example:
        >>> import tempfile, os
        >>> name = os.path.join(tempfile.mkdtemp(), "c.json")
        >>> _ = open(name, "w").write('{"messages": [{"role": "user", "content": "hi"}], "x": 1}')
        >>> load_conversation(name)
        ([{'role': 'user', 'content': 'hi'}], {'x': 1})
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"conversation file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise SourceError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    if isinstance(data, Mapping):
        kwargs = {key: value for key, value in data.items() if key != "messages"}
        data = data.get("messages")
    else:
        kwargs = {}
    valid = isinstance(data, list) and all(isinstance(m, Mapping) and "role" in m for m in data)
    if not valid or not data:
        raise SourceError(f"{path}: expected a non-empty list of messages with a 'role' each")
    return [dict(m) for m in data], kwargs


def example_variants() -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """The built-in example and simpler fallbacks for templates that reject parts of it."""
    no_system = EXAMPLE_MESSAGES[1:]
    no_tools = [EXAMPLE_MESSAGES[0], EXAMPLE_MESSAGES[1], EXAMPLE_MESSAGES[4], *EXAMPLE_MESSAGES[5:]]
    plain = [m for m in no_tools if m["role"] != "system"]
    return [
        ("system, tool call + result, reasoning", EXAMPLE_MESSAGES, {"tools": EXAMPLE_TOOLS}),
        ("tool call + result, reasoning (template rejects a system message)", no_system,
         {"tools": EXAMPLE_TOOLS}),
        ("system, reasoning (template rejects tool messages)", no_tools, {}),
        ("reasoning, no system, no tools (template rejects both)", plain, {}),
    ]


# --------------------------------------------------------------------------- output


def _visible(text: str) -> str:
    return text.replace("\t", "→\t").replace("\n", "↵\n")


def render_terminal(view: MaskView, console: Any | None = None) -> None:
    """Print ``view`` with rich: trained tokens on green, others dim; alternate shades show token
    boundaries; special tokens bold; newlines shown as ``↵``."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    if view.title:
        console.rule(view.title)
    for warning in view.warnings:
        console.print(f"[bold white on red] WARNING [/] [bold red]{html.escape(warning, quote=False)}[/]")
    for note in view.notes:
        console.print(f"[cyan]note:[/] {note}", markup=True, highlight=False)
    body = Text()
    for cell in view.tokens:
        if cell.dropped:
            body.append(_visible(cell.dropped), style="red strike")
        shade = cell.index % 2
        if cell.trained:
            style = "black on green3" if shade else "black on green4"
        else:
            style = "grey85 on grey23" if shade else "grey85 on grey15"
        if cell.special:
            style += " bold"
        body.append(_visible(cell.text), style=style)
    if view.trailing:
        body.append(_visible(view.trailing), style="red strike")
    console.print(body)
    console.print()
    legend = Text()
    legend.append(" trained ", style="black on green3")
    legend.append("  ")
    legend.append(" not trained ", style="grey85 on grey23")
    legend.append("  ")
    legend.append(" special ", style="grey85 on grey23 bold")
    legend.append("  ")
    legend.append("no token", style="red strike")
    legend.append("   ↵ newline  → tab")
    console.print(legend)
    table = Table(title=f"trained tokens: {view.trained} / {view.total}")
    table.add_column("message")
    table.add_column("role")
    table.add_column("trained", justify="right")
    table.add_column("total", justify="right")
    for turn in view.turns:
        number = "" if turn.message is None else str(turn.message)
        table.add_row(number, turn.role, str(turn.trained), str(turn.total))
    console.print(table)
    for issue in view.issues:
        console.print(f"[yellow]token issue ({issue.kind}):[/] {issue.message}", highlight=False, markup=True)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; background: #fafafa; color: #222; }
pre.tokens { white-space: pre-wrap; word-break: break-all; font: 14px/1.7 ui-monospace, monospace;
  background: #fff; border: 1px solid #ddd; padding: 1em; }
span.trained { background: #b7e4b0; color: #0b3d0b; }
span.trained.odd { background: #93d68a; }
span.untrained { background: #eee; color: #666; }
span.untrained.odd { background: #e0e0e0; }
span.special { font-weight: bold; outline: 1px dotted #999; }
span.ws { color: #b0b0b0; }
span.dropped { color: #c62828; text-decoration: line-through; }
span.trained span.ws { color: #4d8c45; }
.warning { background: #c62828; color: #fff; padding: .6em 1em; font-weight: bold; }
.note { color: #1565c0; }
.legend span { padding: 0 .4em; margin-right: .8em; }
table { border-collapse: collapse; margin-top: 1em; }
td, th { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
td:nth-child(2), th:nth-child(2) { text-align: left; }
"""


def _html_piece(text: str) -> str:
    """Escape ``text``; show spaces, tabs and newlines visibly (markers in ``span.ws``)."""
    parts = []
    for char in text:
        if char == " ":
            parts.append('<span class="ws">·</span>')
        elif char == "\t":
            parts.append('<span class="ws">→</span>\t')
        elif char == "\n":
            parts.append('<span class="ws">↵</span>\n')
        elif char == "\r":
            parts.append('<span class="ws">␍</span>')
        else:
            parts.append(html.escape(char))
    return "".join(parts)


def render_html(view: MaskView) -> str:
    """A standalone HTML page of ``view``: legend, tokens (each a ``span.trained`` or
    ``span.untrained`` with ``data-index``/``data-id``), and per-message counts."""
    title = html.escape(view.title or "templatefix show")
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{title}</h1>",
    ]
    lines += [f'<p class="warning">WARNING: {html.escape(w)}</p>' for w in view.warnings]
    lines += [f'<p class="note">{html.escape(n)}</p>' for n in view.notes]
    if view.tokens and all(cell.token_id < 0 for cell in view.tokens):  # build_text_view: characters
        trained = sum(len(cell.text) for cell in view.tokens if cell.trained)
        total = sum(len(cell.text) for cell in view.tokens)
        lines.append(f'<p class="summary">trained characters: <b>{trained}</b> / {total}</p>')
    else:
        lines.append(f'<p class="summary">trained tokens: <b>{view.trained}</b> / {view.total}</p>')
    lines.append(
        '<p class="legend">legend: <span class="trained">trained</span><span class="untrained">not trained'
        '</span><span class="untrained special">special token</span><span class="dropped">no token</span>'
        '<span class="ws">· space</span><span class="ws">↵ newline</span><span class="ws">→ tab</span></p>'
    )
    cells = []
    for cell in view.tokens:
        if cell.dropped:
            cells.append(f'<span class="dropped" title="no token">{_html_piece(cell.dropped)}</span>')
        classes = ["trained" if cell.trained else "untrained"]
        if cell.index % 2:
            classes.append("odd")
        if cell.special:
            classes.append("special")
        cells.append(
            f'<span class="{" ".join(classes)}" data-index="{cell.index}" data-id="{cell.token_id}" '
            f'title="#{cell.index} id {cell.token_id}">{_html_piece(cell.text)}</span>'
        )
    if view.trailing:
        cells.append(f'<span class="dropped" title="no token">{_html_piece(view.trailing)}</span>')
    lines.append('<pre class="tokens">' + "".join(cells) + "</pre>")
    lines.append("<table><tr><th>message</th><th>role</th><th>trained</th><th>total</th></tr>")
    for turn in view.turns:
        number = "" if turn.message is None else str(turn.message)
        lines.append(
            f"<tr><td>{number}</td><td>{html.escape(turn.role)}</td><td>{turn.trained}</td><td>{turn.total}</td></tr>"
        )
    lines.append("</table>")
    if view.issues:
        lines.append("<h2>Token issues</h2><ul>")
        lines += [f"<li><b>{html.escape(i.kind)}</b>: {html.escape(i.message)}</li>" for i in view.issues]
        lines.append("</ul>")
    lines.append("</body></html>")
    return "\n".join(lines) + "\n"
