"""The one module that touches transformers' chat-template internals.

transformers renders chat templates with private helpers in
``transformers.utils.chat_template_utils`` whose names and behaviour change between releases
(4.56 has no ``_plain_template_data``; 5.24 keeps a ``ContextVar`` in its ``generation`` tracker
and computes ``assistant_masks`` from token offsets instead of ``char_to_token``). Everything
templatefix needs from there is reached through this module, and what differs between releases is
*detected*, never assumed from a version number:

- ``new_environment()``: a fresh jinja2 environment built by transformers' own factory (the
  uncached compile function), so it has exactly transformers' settings, globals, filters and
  ``generation`` extension; checked to have the tracker it needs.
- ``prepare_inputs(...)``: the conversion ``apply_chat_template`` applies before rendering
  (dropping ``None``-valued message keys, plain template data, reasoning aliases), each step
  applied only when the installed release does it. Which steps it does is measured once per
  process by rendering three tiny probes through ``apply_chat_template`` itself
  (``detected_behaviour()``).
- ``tracking(environment, blocks, indices)``: transformers' generation-span tracker.
- ``is_generation_block(node)``: whether a parsed node is a ``{% generation %}`` block.
- ``mask_rule()``: how ``apply_chat_template`` turns spans into ``assistant_masks`` on the
  installed release, again measured with a tiny in-memory tokenizer.
- ``pinned_clock(moment)``: transformers' own ``strftime_now`` formats one moment while the block
  runs (it formats ``datetime.now()`` of its module; whether pinning works is checked once).

Example:
    >>> env = new_environment()
    >>> env.from_string("{{ messages | length }}").render(messages=[1, 2])
    '2'
    >>> mask_rule() in ("char_to_token", "overlap")
    True
"""

from __future__ import annotations

import datetime as _datetime
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeGuard, cast

import jinja2
from jinja2 import nodes
from transformers.utils import chat_template_utils as _ctu

from templatefix.errors import UnsupportedTransformersError

MaskRule = Literal["char_to_token", "overlap"]

#: The tag name transformers' span tracker registers.
GENERATION_TAG = "generation"


def _compile_function() -> Callable[[str], jinja2.Template]:
    """transformers' template compiler, without its cache (so each call builds a new environment)."""
    compile_template = getattr(_ctu, "_compile_jinja_template", None)
    if compile_template is None:
        raise UnsupportedTransformersError(
            "transformers.utils.chat_template_utils has no _compile_jinja_template"
        )
    return getattr(compile_template, "__wrapped__", compile_template)


def _tracker_extension(environment: jinja2.Environment) -> jinja2.ext.Extension:
    for extension in environment.extensions.values():
        if GENERATION_TAG in getattr(extension, "tags", ()):
            return extension
    raise UnsupportedTransformersError("transformers' chat-template environment has no generation tag")


def new_environment() -> jinja2.Environment:
    """A new instance of transformers' chat-template environment.

    Raises:
        UnsupportedTransformersError: the installed transformers builds no environment with a
            ``generation`` tag and span tracker.

    Example:
        >>> new_environment().trim_blocks
        True
    """
    environment = _compile_function()("").environment
    _tracker_extension(environment)
    if not callable(getattr(environment, "activate_tracker", None)):
        raise UnsupportedTransformersError("transformers' chat-template environment has no span tracker")
    return environment


class _Tracking(Protocol):
    """What transformers' generation extension adds to its environment (``new_environment`` checks it)."""

    def activate_tracker(self, blocks: list[str], indices: list[Any]) -> AbstractContextManager[Any]: ...


@contextmanager
def tracking(environment: jinja2.Environment, blocks: list[str], indices: list[Any]) -> Iterator[None]:
    """Record ``{% generation %}`` spans into ``indices`` while rendering into ``blocks``.

    The same call ``_render_with_assistant_indices`` makes around ``template.generate``.
    """
    with cast(_Tracking, environment).activate_tracker(blocks, indices):
        yield


def is_generation_block(node: nodes.Node) -> TypeGuard[nodes.CallBlock]:
    """Whether ``node`` is a parsed ``{% generation %}…{% endgeneration %}`` block.

    transformers' extension parses the tag into a ``CallBlock`` calling a method of the
    extension; we recognise it by the extension that owns the called attribute.
    """
    if not isinstance(node, nodes.CallBlock) or not isinstance(node.call, nodes.Call):
        return False
    target = node.call.node
    return isinstance(target, nodes.ExtensionAttribute) and target.identifier == _tracker_identifier()


@functools.lru_cache(maxsize=1)
def _tracker_identifier() -> str:
    return _tracker_extension(new_environment()).identifier


def tool_schema(tool: Any) -> dict[str, Any]:
    """A tool as a JSON schema, as ``apply_chat_template`` converts it (dicts pass through)."""
    if isinstance(tool, dict):
        return tool
    if inspect.isfunction(tool) or inspect.ismethod(tool):
        return _ctu.get_json_schema(tool)
    raise ValueError(
        "Tools should either be a JSON schema, or a callable function with type hints "
        "and a docstring suitable for auto-conversion to a schema."
    )


# -- behaviour of the installed release, measured once -------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """What the installed ``apply_chat_template`` does to its inputs and spans.

    Attributes:
        drops_none: message keys whose value is ``None`` are removed before rendering.
        plain_data: inputs are rebuilt from plain JSON types (``_plain_template_data``).
        aliases_reasoning: ``reasoning_content`` / ``thinking`` / ``reasoning`` are copied to
            each other (``_alias_reasoning_fields``).
        mask_rule: ``"char_to_token"`` (each span's first and last character mapped to tokens;
            a span whose first character no token covers is dropped with every later one) or
            ``"overlap"`` (every token overlapping a span).
    """

    drops_none: bool
    plain_data: bool
    aliases_reasoning: bool
    mask_rule: MaskRule


class _Opaque:
    """An object ``_plain_template_data`` turns into the placeholder ``<_Opaque>``."""

    def __str__(self) -> str:
        return "opaque"


@functools.lru_cache(maxsize=1)
def detected_behaviour() -> Behaviour:
    """Measure ``Behaviour`` by calling ``apply_chat_template`` with a tiny in-memory tokenizer.

    Raises:
        UnsupportedTransformersError: a measured step has no helper to reproduce it with.
    """
    tokenizer = _word_tokenizer()

    def rendered(template: str, message: dict[str, Any]) -> str:
        return tokenizer.apply_chat_template([message], chat_template=template, tokenize=False)

    drops_none = rendered("{{ messages[0].x is defined }}", {"role": "user", "x": None}) == "False"
    plain_data = rendered("{{ messages[0].x }}", {"role": "user", "x": _Opaque()}) == "<_Opaque>"
    aliases = rendered("{{ messages[0].thinking is defined }}", {"role": "a", "reasoning_content": "r"})
    behaviour = Behaviour(drops_none, plain_data, aliases == "True", _measure_mask_rule(tokenizer))
    if behaviour.plain_data and not hasattr(_ctu, "_plain_template_data"):
        raise UnsupportedTransformersError("transformers converts template data without _plain_template_data")
    if behaviour.aliases_reasoning and not hasattr(_ctu, "_alias_reasoning_fields"):
        raise UnsupportedTransformersError("transformers aliases reasoning without _alias_reasoning_fields")
    return behaviour


def mask_rule() -> MaskRule:
    """How the installed transformers turns spans into ``assistant_masks`` (see ``Behaviour``)."""
    return detected_behaviour().mask_rule


def _word_tokenizer() -> Any:
    """A fast tokenizer built in memory: one token per word, spaces covered by no token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {"[UNK]": 0, "a": 1, "b": 2, "c": 3}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def _measure_mask_rule(tokenizer: Any) -> MaskRule:
    # "a b c" with the span " b" (1, 3): its first character is a space no token covers.
    # char_to_token drops the span (mask 0 0 0); the overlap rule marks "b" (mask 0 1 0).
    template = "{{ 'a' }}{% generation %}{{ ' b' }}{% endgeneration %}{{ ' c' }}"
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": ""}],
        chat_template=template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    mask = list(encoded["assistant_masks"])
    if mask == [0, 1, 0]:
        return "overlap"
    if mask == [0, 0, 0]:
        return "char_to_token"
    raise UnsupportedTransformersError(f"unrecognised assistant_masks rule (probe gave {mask})")


# -- the clock transformers' strftime_now reads -------------------------------------------------


def _pinned_class(moment: _datetime.datetime) -> type[_datetime.datetime]:
    class Pinned(_datetime.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> _datetime.datetime:  # type: ignore[override]
            return moment if tz is None else moment.astimezone(tz)

    return Pinned


@contextmanager
def _swapped_clock(moment: _datetime.datetime) -> Iterator[None]:
    namespace = vars(_ctu)  # the module's globals: the name its strftime_now looks up
    current = namespace["datetime"]
    namespace["datetime"] = _pinned_class(moment)
    try:
        yield
    finally:
        namespace["datetime"] = current


@functools.lru_cache(maxsize=1)
def _clock_can_be_pinned() -> bool:
    """Whether transformers' ``strftime_now`` reads its module's ``datetime.now()`` (measured)."""
    if getattr(_ctu, "datetime", None) is not _datetime.datetime:
        return False
    moment = _datetime.datetime(2001, 2, 3, 4, 5, 6, 789012)
    template = _compile_function()("{{ strftime_now('%Y-%m-%d %H:%M:%S.%f') }}")
    with _swapped_clock(moment):
        return template.render() == "2001-02-03 04:05:06.789012"


@contextmanager
def pinned_clock(moment: _datetime.datetime | None) -> Iterator[None]:
    """transformers' own ``strftime_now`` (``apply_chat_template``) formats ``moment`` in the block.

    ``None``, or a release whose ``strftime_now`` cannot be pinned this way, leaves it unchanged.
    """
    if moment is None or not _clock_can_be_pinned():
        yield
        return
    with _swapped_clock(moment):
        yield


# -- inputs, as apply_chat_template prepares them -----------------------------------------------


@dataclass(frozen=True)
class TemplateInputs:
    """The variables a template sees, prepared as ``apply_chat_template`` prepares them."""

    messages: list[Any]
    tools: list[Any] | None
    documents: list[Any] | None
    arguments: dict[str, Any]

    def variables(self, add_generation_prompt: bool) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "tools": self.tools,
            "documents": self.documents,
            "add_generation_prompt": add_generation_prompt,
            **self.arguments,
        }


def prepare_inputs(
    messages: Sequence[Any],
    tools: Sequence[Any] | None,
    documents: Sequence[Any] | None,
    arguments: Mapping[str, Any],
) -> TemplateInputs:
    """Convert inputs exactly as the installed ``apply_chat_template`` does before rendering.

    Raises:
        ValueError / TypeError: the same input errors transformers raises (bad tools, documents
            or messages).

    Example:
        >>> prepare_inputs([{"role": "user", "content": "hi"}], None, None, {}).messages
        [{'role': 'user', 'content': 'hi'}]
    """
    behaviour = detected_behaviour()
    chat: list[Any] = list(messages)
    if behaviour.drops_none:
        chat = [
            {k: v for k, v in message.items() if v is not None} if isinstance(message, Mapping) else message
            for message in chat
        ]
    tool_schemas = [tool_schema(tool) for tool in tools] if tools is not None else None
    document_list = list(documents) if documents is not None else None
    for document in document_list or ():
        if not isinstance(document, dict):
            raise TypeError("Documents should be a list of dicts with 'title' and 'text' keys!")
    # read from the module's globals: not every supported transformers defines these helpers
    plain: Callable[[Any], Any] = vars(_ctu)["_plain_template_data"] if behaviour.plain_data else _identity
    chat = plain(chat)
    for message in chat:
        if not isinstance(message, dict):
            raise TypeError(
                f"Chat messages should be dicts, dataclasses or pydantic models, but got {message!r}."
            )
    if behaviour.aliases_reasoning:
        chat = vars(_ctu)["_alias_reasoning_fields"](chat)
    return TemplateInputs(chat, plain(tool_schemas), plain(document_list), plain(dict(arguments)))


def _identity(value: Any) -> Any:
    return value
