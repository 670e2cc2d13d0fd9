"""Chat mode's engine part: a conversation templated by the tokenizer, and the assistant's reply
written one token at a time by the ordinary `TokenStepper`. No Gradio here.

A chat model reads one token sequence: the messages wrapped in its chat template's markers
(ChatML: `<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n`). The template is the
tokenizer's own, applied by `tokenizer.apply_chat_template`; tokstep never formats a chat
by hand. That sequence is the stepper's prompt, so stepping, undo, top-k and sampling are
the engine's own. The turn ends when the model writes an end-of-turn token: its eos ids, or
the token the template closes an assistant message with (found by rendering one).

Control tokens a user types (a literal `<|im_end|>` in a message) are encoded as plain text
(`sanitize_control_tokens=True`), so only the template writes control tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from transformers import PreTrainedTokenizerBase

from tokstep.core.model import LanguageModel
from tokstep.core.sampling import SamplingSettings
from tokstep.core.stepper import PromptError, Step, TokenStepper, context_full_message

# What a token of the conversation is: a control token (`<|im_start|>`), other text the
# template writes (the role name, line breaks), the messages' own text, or the reply's tokens.
TokenKind = Literal["special", "template", "text", "reply"]
Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": text}
ROLES = ("system", "user", "assistant")
MAX_MESSAGE_CHARS = 20_000  # refused before templating: a huge paste must not keep the server busy
NO_TEMPLATE_MESSAGE = "This model has no chat template: choose a chat model (one whose tokenizer has a chat_template)."
# Rendered as an assistant message to find the token the template closes a turn with.
_PROBE = "tokstep-probe-reply"


class ChatError(ValueError):
    """A chat action that cannot be done; the message says why and what to do, for the user."""


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer carries a chat template (a string, or a dict of named ones)."""
    return bool(getattr(tokenizer, "chat_template", None))


def check_messages(messages: Sequence[Message]) -> list[Message]:
    """`messages` as a list of {"role", "content"} dicts with known roles, or a ChatError."""
    checked = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ChatError(f"A chat message must be a dict with a role in {ROLES}, got {message!r}.")
        if not isinstance(message.get("content"), str):
            raise ChatError("A chat message's content must be text.")
        checked.append({"role": message["role"], "content": message["content"]})
    return checked


def conversation_ids(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], add_generation_prompt: bool = True
) -> list[int]:
    """The token ids the model reads for `messages`: the tokenizer's chat template applied by
    the library, ending with the assistant's header when `add_generation_prompt`."""
    if not has_chat_template(tokenizer):
        raise ChatError(NO_TEMPLATE_MESSAGE)
    try:
        ids = tokenizer.apply_chat_template(
            list(messages),
            add_generation_prompt=add_generation_prompt,
            tokenize=True,
            return_dict=False,
            sanitize_control_tokens=True,
        )
    except Exception as error:  # templates raise jinja errors of their own (raise_exception)
        raise ChatError(f"The model's chat template refused this conversation: {error}") from None
    return [int(i) for i in ids]


def control_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids of the tokenizer's special tokens: its named ones and every added token marked special."""
    ids = set(tokenizer.all_special_ids)
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(token_id for token_id, token in decoder.items() if getattr(token, "special", False))
    return frozenset(ids)


def end_of_turn_ids(lm: LanguageModel) -> frozenset[int]:
    """Ids that end the assistant's turn: the model's eos ids (its generation config's, as
    `generate` stops on them) and the control token the template writes right after an
    assistant message (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3)."""
    ids = set(lm.eos_token_ids)
    tokenizer = lm.tokenizer
    if not has_chat_template(tokenizer):
        return frozenset(ids)
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # a template that takes no such conversation: the eos ids must do
        return frozenset(ids)
    at = rendered.rfind(_PROBE)
    if at >= 0:
        after = tokenizer(rendered[at + len(_PROBE) :], add_special_tokens=False)["input_ids"]
        controls = control_token_ids(tokenizer)
        ids.update(next(([i] for i in after if i in controls), []))
    return frozenset(ids)


def template_token_kinds(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], ids: Sequence[int]
) -> list[TokenKind]:
    """For each id of `conversation_ids(tokenizer, messages)`: "special", "template" or "text".

    The template is rendered as text and tokenized with character offsets; a token is "text"
    where it overlaps a message's content (found in order in the rendering). Where that
    tokenization is not `ids` (a slow tokenizer without offsets, or a message holding a
    control token's text, which the ids encode as plain text), only control tokens are told
    apart: the rest count as "text".
    """
    controls = control_token_ids(tokenizer)
    fallback: list[TokenKind] = ["special" if i in controls else "text" for i in ids]
    try:
        rendered = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    except Exception:  # slow tokenizers have no offsets
        return fallback
    if list(encoded["input_ids"]) != list(ids):
        return fallback
    spans = []  # (start, end) character spans of the messages' content in `rendered`
    cursor = 0
    for message in messages:
        content = message["content"]
        at = rendered.find(content, cursor) if content else -1
        if at >= 0:
            spans.append((at, at + len(content)))
            cursor = at + len(content)
    kinds: list[TokenKind] = []
    for token_id, (start, end) in zip(ids, encoded["offset_mapping"], strict=True):
        if token_id in controls:
            kinds.append("special")
        elif any(start < span_end and span_start < end for span_start, span_end in spans):
            kinds.append("text")
        else:
            kinds.append("template")
    return kinds


class ChatTurn:
    """The assistant's reply to `messages` (which end with the user's), written token by token.

    >>> turn = ChatTurn(lm, [{"role": "user", "content": "Hi"}])
    >>> turn.step().token_id in turn.end_ids or turn.reply_text()
    """

    def __init__(self, lm: LanguageModel, messages: Sequence[Message]) -> None:
        self.messages = check_messages(messages)
        if not self.messages:
            raise ChatError("The conversation is empty. Type a message first.")
        ids = conversation_ids(lm.tokenizer, self.messages)
        try:
            self.stepper = TokenStepper(lm, ids)
        except PromptError:
            limit = lm.context_length
            raise ChatError(
                f"The conversation is {len(ids)} tokens with its chat template, but {lm.name} reads at most "
                f"{limit} tokens, the reply included. Clear the chat or send a shorter message."
            ) from None
        self.end_ids = end_of_turn_ids(lm)
        self._controls = control_token_ids(lm.tokenizer)
        self._template_kinds: list[TokenKind] | None = None

    @property
    def lm(self) -> LanguageModel:
        return self.stepper.lm

    @property
    def ended_by_model(self) -> bool:
        """Whether the model wrote an end-of-turn token last."""
        generated = self.stepper.generated_ids
        return bool(generated) and generated[-1] in self.end_ids

    @property
    def context_full(self) -> bool:
        room = self.stepper.room_left
        return room is not None and room <= 0

    @property
    def over(self) -> bool:
        """Whether the reply can take no more tokens: the model ended its turn, or the context is full."""
        return self.ended_by_model or self.context_full

    @property
    def reply_ids(self) -> list[int]:
        """The reply's tokens, without the end-of-turn token that closed it."""
        generated = self.stepper.generated_ids
        return generated[:-1] if self.ended_by_model else generated

    def reply_text(self) -> str:
        """The reply so far as text (tokens decoded together, so split characters join up)."""
        return self.lm.texts.decode(self.reply_ids)

    def step(
        self,
        top_k_size: int = 5,
        token_id: int | None = None,
        sampling: SamplingSettings | None = None,
        run: int | None = None,
    ) -> Step:
        """Append one token to the reply (the engine's `TokenStepper.step`, `run` included); ChatError
        once the turn is over."""
        if self.ended_by_model:
            raise ChatError(
                "The assistant's turn is over: it wrote its end-of-turn token. "
                "Send a new message, or Undo to take that token back."
            )
        if self.context_full:
            raise ChatError(context_full_message(self.lm).replace("Reset", "Clear the chat"))
        return self.stepper.step(top_k_size, token_id=token_id, sampling=sampling, run=run)

    def undo(self) -> Step:
        """Take back the reply's last token; ChatError when the reply has none."""
        if not self.stepper.can_undo:
            raise ChatError("Nothing to undo: the reply has no tokens yet. Step to write one.")
        return self.stepper.undo()

    def history(self) -> list[Message]:
        """The messages with the reply so far as the assistant's last message (none while it is empty)."""
        reply = self.reply_text()
        if not self.stepper.generated_ids:
            return list(self.messages)
        return [*self.messages, {"role": "assistant", "content": reply}]

    def token_kinds(self) -> list[TokenKind]:
        """What each token of the whole sequence is: the template's kinds, then "reply" (or
        "special" for a control token the model wrote, such as its end-of-turn token)."""
        if self._template_kinds is None:
            prompt = self.stepper.ids[: self.stepper.prompt_length]
            self._template_kinds = template_token_kinds(self.lm.tokenizer, self.messages, prompt)
        generated: list[TokenKind] = ["special" if i in self._controls else "reply" for i in self.stepper.generated_ids]
        return [*self._template_kinds, *generated]


def check_user_message(text: object) -> str:
    """The user's message as typed, or a ChatError when it is not text, empty or too long."""
    if not isinstance(text, str):
        raise ChatError(f"The message must be text, got {type(text).__name__}.")
    if not text.strip():
        raise ChatError("The message is empty. Type something to say to the model.")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ChatError(
            f"The message is {len(text):,} characters long; chat mode takes at most {MAX_MESSAGE_CHARS:,}. "
            "Send a shorter message."
        )
    return text


def start_turn(lm: LanguageModel, messages: Sequence[Message], text: object) -> ChatTurn:
    """The assistant's turn after `messages` and the user's new message `text`; ChatError when
    the model has no chat template, the message is empty or too long, or the conversation does
    not fit in the model's context. `messages` itself is never changed."""
    if not has_chat_template(lm.tokenizer):
        raise ChatError(NO_TEMPLATE_MESSAGE)
    text = check_user_message(text)
    return ChatTurn(lm, [*check_messages(messages), {"role": "user", "content": text}])


class ChatSession:
    """One user's chat: the finished messages and the assistant's turn being written (if any)."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm
        self.messages: list[Message] = []  # every message shown, the user's last one included
        self.turn: ChatTurn | None = None  # the reply to `messages`, while it is being written

    def history(self) -> list[Message]:
        """The whole conversation as shown: the messages and the reply so far."""
        return self.turn.history() if self.turn is not None else list(self.messages)

    def send(self, text: object) -> ChatTurn:
        """Add the user's message after the reply so far and start the assistant's next turn.

        A reply in progress is kept as it stands. ChatError, with the session unchanged, when
        the reply has not started yet, or for what `start_turn` refuses.
        """
        if self.turn is not None and not self.turn.stepper.generated_ids:
            raise ChatError("The assistant has not replied yet: press Step or Auto-run to write its reply, then send.")
        turn = start_turn(self.lm, self.history(), text)
        self.messages, self.turn = turn.messages, turn
        return turn

    def clear(self) -> None:
        """Start a new, empty chat."""
        self.messages, self.turn = [], None

    def use_model(self, lm: LanguageModel) -> bool:
        """Switch to `lm` (the page's model changed): the conversation's text stays, the reply so
        far becomes a finished message, and the next Send templates it all for the new model.
        Returns whether anything changed."""
        if lm is self.lm:
            return False
        self.messages, self.turn, self.lm = self.history(), None, lm
        return True
