"""Where the answer looked: for each answer token, the attention it put on the 12 x 12 image tokens.

The conversation up to the answer is replayed through the engine's attention probe (runtime/attention.py): the
attention of the query that *predicted* each answer token (the position before it) on the picture's 144 positions,
for every layer and head. `heatmap()` averages what is asked for (all layers and heads, or one layer, or one head)
into a 12 x 12 map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MvlmError
from ..runtime.tokenizer import IMAGE_TOKEN_INDEX, conversation_ids


@dataclass
class AnswerAttention:
    tokens: list[int]  # the answer's token ids
    texts: list[str]  # and their text
    maps: np.ndarray  # (L, H, N, 144): answer token n's attention on each image token, per layer and head
    side: int  # image tokens per side (12)

    @property
    def layers(self) -> int:
        return self.maps.shape[0]

    def heatmap(self, token: int | None = None, layer: int | None = None, head: int | None = None) -> np.ndarray:
        """(side, side): the attention on each image token, averaged over the answer (token None) or for one token,
        over all layers (layer None) or one, over all heads (head None) or one."""
        maps = self.maps if layer is None else self.maps[layer : layer + 1]
        maps = maps if head is None else maps[:, head : head + 1]
        maps = maps if token is None else maps[:, :, token : token + 1]
        return maps.mean(axis=(0, 1, 2)).reshape(self.side, self.side)


def answer_attention(engine, chat, answer=None) -> AnswerAttention:
    """The attention of `answer` (default: the chat's latest) on its picture, read from the engine's model."""
    from ..runtime.confidence import token_text

    if chat.image is None or chat.image_embeds is None:
        raise MvlmError("this chat has no picture to look at; ask about a picture first.")
    turn = len(chat.history) - 1 if answer is None else _turn_of(chat, answer)
    if turn < 0:
        raise MvlmError("this chat has no answer yet; ask a question first.")
    question, text = chat.history[turn]
    answer_ids = list(answer.token_ids) if answer is not None else engine.tokenizer.encode(text, add_bos=False)
    if not answer_ids:
        raise MvlmError("the answer is empty: there is no token whose attention to show.")
    prompt = conversation_ids(engine.tokenizer, chat.history[:turn] + [(question, None)], with_image=True)
    ids = prompt + answer_ids[:-1]  # the last answer token predicts nothing that is shown
    image_at = prompt.index(IMAGE_TOKEN_INDEX)  # text positions before the picture: one each
    count, side = int(engine.num_image_tokens), int(round(engine.num_image_tokens ** 0.5))
    first = engine.kv.positions(prompt) - 1  # the position that predicted the first answer token
    embeds = engine.embed(ids, chat.image_embeds)
    attention = engine.attention_probe().attention(embeds)  # (L, H, T, T)
    rows = np.arange(first, first + len(answer_ids))
    maps = attention[:, :, rows, image_at : image_at + count]  # (L, H, N, 144)
    return AnswerAttention(answer_ids, [token_text(engine.tokenizer, t) for t in answer_ids], maps, side)


def _turn_of(chat, answer) -> int:
    for turn in range(len(chat.history) - 1, -1, -1):
        if chat.history[turn] == (answer.question, answer.text):
            return turn
    raise MvlmError("this answer is not in this chat; pass the chat it was asked in.")
