"""The chat template: how a conversation becomes one token sequence, and which of its tokens a model learns from.

    ids, learn = render(tok, [{"role": "user", "content": "Translate to French: A dog runs."},
                              {"role": "assistant", "content": "Un chien court."}])
    ids = prompt_ids(tok, history)          # the same conversation, ending where the assistant's next reply begins

A pre-trained GPT only continues text. To ask it something, the question and the answer must sit in the sequence in a
shape the model can recognise, and the model must be able to say "my answer is over". Chat models do this with a few
tokens that have ids of their own and never come out of ordinary text (Stage 5's BPE already keeps <|endoftext|> that
way):

    <|endoftext|><|user|>Translate to French: A dog runs.<|end|><|assistant|>Un chien court.<|end|>

- <|user|> and <|assistant|> say who speaks next; <|end|> closes a turn. Generating stops when the model writes
  <|end|>, so the model itself decides how long its answer is.
- A user's text is always encoded as plain text: a message that contains the characters "<|end|>" cannot close its
  own turn or forge an assistant's reply (see `encode_plain`). Only `render` places the special ids.
- Supervised fine-tuning learns from the assistant's tokens only (its words and its <|end|>): `render` returns, for
  every position, whether its token is one the model should learn to produce. The prompt is context, not a target;
  training on it would spend the model's capacity on writing questions.

The same function renders training examples (sft.py), evaluation prompts, the terminal chat (chat.py) and the web
demo's chat tab, so the model always sees the layout it was trained on. The tokens are in the tokenizer from the start:
train.py's `course_mix` corpus trains a BPE that has them (they never occur in its text), so the base model that
sft.py starts from already owns an embedding for each, and the fine-tuning teaches what they mean.
"""
from __future__ import annotations

from scripts.common import UserError
from stage5_gpt.tokenizer import EOT

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
TEMPLATE_TOKENS = (USER, ASSISTANT, END)
SPECIAL_TOKENS = (EOT, *TEMPLATE_TOKENS)   # the order a chat-ready tokenizer gives them ids in
ROLES = {"user": USER, "assistant": ASSISTANT}


def check_template(tok, where: str = "this tokenizer") -> None:
    """Refuse a tokenizer (a character one, or a BPE without the template's tokens) before any work is done."""
    specials = getattr(tok, "special_tokens", {})
    missing = [t for t in SPECIAL_TOKENS if t not in specials]
    if missing:
        raise UserError(f"{where} has no chat template tokens ({', '.join(missing)} missing): start from a GPT "
                        f"pre-trained on the course_mix corpus (train.py --dataset course_mix), whose tokenizer has "
                        f"them")


def encode_plain(tok, text: str) -> list[int]:
    """A message's text as ordinary tokens: special-token strings in it stay characters, never template ids."""
    return tok.encode(text)


def render(tok, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """A conversation -> (ids, learn): learn[i] is True where ids[i] is a token of an assistant's reply (its text and
    its closing <|end|>), the tokens supervised fine-tuning is trained to predict. With add_generation_prompt the
    sequence ends with <|assistant|>, where the model's next reply begins."""
    check_template(tok)
    if not messages and not add_generation_prompt:
        raise UserError("a conversation needs at least one message")
    special = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    ids, learn = [special[EOT]], [False]            # a conversation starts like a pre-training document
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise UserError(f"message {i + 1}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise UserError(f"message {i + 1} ({role}) is empty: write something")
        text = [special[ROLES[role]]] + encode_plain(tok, content) + [special[END]]
        ids += text
        # the role token is context (the template put it there); the reply and its <|end|> are the lesson
        learn += [False] + [role == "assistant"] * (len(text) - 1)
    if add_generation_prompt:
        ids.append(special[ASSISTANT])
        learn.append(False)
    return ids, learn


def prompt_ids(tok, messages: list[dict], block_size: int | None = None, max_new_tokens: int = 0) -> list[int]:
    """The prompt for the assistant's next reply. With block_size, the oldest turns are dropped (whole turns, a user
    message with the reply that followed it) until the prompt and max_new_tokens fit the model's context; the last
    message alone not fitting is the user's error."""
    if not messages or messages[-1].get("role") != "user":
        raise UserError("the conversation must end with a user message")
    ids, _ = render(tok, messages, add_generation_prompt=True)
    if block_size is None:
        return ids
    kept = list(messages)
    while len(ids) + max_new_tokens > block_size and len(kept) > 1:
        kept = kept[2:] if len(kept) > 2 else kept[1:]   # drop the oldest exchange
        ids, _ = render(tok, kept, add_generation_prompt=True)
    if len(ids) + max_new_tokens > block_size:
        raise UserError(f"the message is {len(ids)} tokens with the template, and the reply may take "
                        f"{max_new_tokens} more: the model reads at most {block_size}. Write less, or ask for a "
                        f"shorter reply (--max-new-tokens)")
    return ids


def reply_text(tok, ids: list[int]) -> tuple[str, bool]:
    """Generated ids -> (the reply's text up to <|end|>, whether <|end|> was reached). Any other special token the
    model writes ends the reply as well, without being shown."""
    stops = {tok.token_to_id(t) for t in SPECIAL_TOKENS}
    for n, i in enumerate(ids):
        if i in stops:
            return tok.decode(ids[:n]), i == tok.token_to_id(END)
    return tok.decode(ids), False
