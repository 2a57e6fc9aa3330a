"""Train the nano MobileVLM that ships in mvlm_magic/data/nano, from scratch, on this CPU.

    python -m tools.nano.train --out mvlm_magic/data/nano        # from the repository root

The model is MobileVLM V2 at small width: a CLIP ViT at 336 px / patch 14 (577 tokens, the real
preprocessing), the LDPv2 projector to 144 tokens, a few-layer LLaMA, a SentencePiece tokenizer trained
on the question/answer corpus, prompt template v1. It is saved in the mtgv checkpoint layout
(config.json with model_type "mobilevlm", pytorch_model.bin in bf16 under the real key names), so the
same loader, exporter and runtime serve it as they serve mtgv/MobileVLM_V2-1.7B.

Training is LLaVA-style SFT on chats of 1-4 turns about each picture (the classroom questions of
mvlm_magic/demo/conversations.py): the prompt is exactly the one the runtime builds (`conversation_ids`), the
pixels exactly `preprocess_image`'s, and only the answer tokens and their closing `</s>` carry loss. Every
picture is drawn on the fly from its seed (training seeds and held-out seeds never overlap, see
mvlm_magic/demo/shapes.py). Everything is seeded; with the same version of torch a run reproduces its weights
(docs/nano.md: the recipe, its time and its accuracy; the shipped weights are this command's).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import rotate_half

from mvlm_magic.demo import BUNDLED_DIR, conversations, shapes
from mvlm_magic.model.config import MobileVLMConfig
from mvlm_magic.model.mobilevlm import IMAGE_TOKEN_INDEX, MobileVLM
from mvlm_magic.model.tiny import TinySpec, save_weights, tiny_config
from mvlm_magic.model.tiny_tokenizer import train_sentencepiece
from mvlm_magic.runtime.preprocess import preprocess_image
from mvlm_magic.runtime.tokenizer import SYSTEM, Tokenizer, build_conversation, conversation_ids

MODEL_ID = "mvlm-magic/nano-mobilevlm"


@dataclass
class TrainConfig:
    # model
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    vision_hidden_size: int = 64
    vision_layers: int = 3  # layer -2 feeds the projector, so the last layer is unused (as in the real models)
    vision_heads: int = 2
    vision_intermediate_size: int = 256
    vocab_size: int = 768  # 259 pieces go to bytes and specials: at 512 most words took 2-4 pieces, at 768 one
    # optimisation
    steps: int = 5500  # joint phase
    images_per_step: int = 8
    questions_per_image: int = 16  # (at most: as many as the picture has); more questions per ViT pass
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 60
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2  # the joint phase's; the vision phase runs on one (its steps are short: the picture worker needs
    # the other core)
    workers: int = 1  # processes drawing pictures (each step's batch depends on its step alone, not on who drew it)
    local_attention: str = "0.3,1.0"  # per-head sharpness of the local-attention init of the ViT ("": HF's init)
    vision_steps: int = 2000  # first: the vision tower + projector alone, on the per-token labels
    aux_hidden: int = 0  # width of a hidden layer in the training-only head (0: a linear head, which keeps the
    # classes linearly readable by the language model's attention)
    aux_weight: float = 1.0  # training-only per-token colour/shape/size/cell loss on the projector output
    object_weight: float = 10.0  # tokens covered by an object weigh this much more than background in that loss
    curriculum_steps: int = 300  # first steps: pictures with few objects (1, then up to 2, then up to 3)
    freeze_vision: bool = False  # joint phase: the ViT stays as the vision phase left it (as in LLaVA / MobileVLM
    # fine-tuning) and the vision phase anneals its learning rate; skipping the ViT's backward buys more steps,
    # but shape and size then stop improving (docs/nano.md, "Session 3 experiments")
    # pick a picture's questions of these kinds more often (the long answers and the counts learn slowest)
    question_weights: str = "where=2,describe=3,detail=6,count=3,count_colour=3,yesno=3,count_all=2"
    lookup_weight: float = 1.0  # training-only: teach one head of the last layer to look at the object a question
    # names (see `lookup_loss`); without it "where is the X?" answered with another object's place. At 0.3 whether
    # it converged depended on the run (docs/nano.md, "Tenth and eleventh weights")
    eval_every: int = 4300  # one check part-way through the joint phase (each costs about a minute)
    eval_questions: int = 60
    # issue 14: classroom conversations
    max_turns: int = conversations.MAX_TURNS  # a picture's questions are grouped into chats of 1..max_turns turns
    # (loss on every answer)
    outside_fraction: float = 0.08  # pictures from outside the shapes world (noise, drawings, gradients, textures)
    vary_fraction: float = 0.5  # questions re-spelled (color, case, no "?", "a" for "the")
    init: str = ""  # start from this checkpoint folder (its weights and tokenizer) instead of from scratch
    first_picture: int = 0  # training pictures are TRAIN_SEEDS from this offset on: a continuation can start past
    # the pictures the earlier runs drew (step s draws from its own Batches.PICTURES_PER_STEP seeds): new ones


# --- tokenizer ---------------------------------------------------------------------------------


def tokenizer_corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = [SYSTEM, "USER:", "ASSISTANT:"] + conversations.corpus_texts()
    texts += [conversations.follow_up(conversations.vary(text, rng), rng)  # "picture", "how many", "color", ...
              for text in texts[3:] if text.endswith("?") for _ in range(2)]
    for s in range(400):
        for _, question, answer in shapes.make_scene(10_000_000 + s).questions:
            if rng.random() < 0.3:
                texts.append(build_conversation([(question, answer)]))
    return texts


def train_tokenizer(folder: Path, vocab_size: int, seed: int) -> Tokenizer:
    """A LLaMA-style SentencePiece model on the QA corpus (same trainer settings as model/tiny_tokenizer.py)."""
    model = io.BytesIO()
    train_sentencepiece(model, tokenizer_corpus(seed), vocab_size)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    added = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": {"__type": "AddedToken", **added, "content": "<s>"},
        "clean_up_tokenization_spaces": False,
        "eos_token": {"__type": "AddedToken", **added, "content": "</s>"},
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": {"__type": "AddedToken", **added, "content": "<unk>"},
    }
    special = {"bos_token": {**added, "content": "<s>"}, "eos_token": {**added, "content": "</s>"},
               "pad_token": "<unk>", "unk_token": {**added, "content": "<unk>"}}
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", special)
    return Tokenizer.from_folder(folder)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- data --------------------------------------------------------------------------------------


def chat_ids(tokenizer: Tokenizer, turns: list[tuple[str, str]]) -> tuple[list[int], tuple[tuple[int, int], ...]]:
    """The ids of a whole chat, "... ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>", and the (start, end) of every
    answer (with its </s>) in them: each answer starts where the runtime's prompt for that turn ends."""
    full = conversation_ids(tokenizer, list(turns))
    spans = []
    for k in range(len(turns)):
        prompt = conversation_ids(tokenizer, list(turns[:k]) + [(turns[k][0], None)])
        if full[: len(prompt)] != prompt:
            raise AssertionError(f"turn {k + 1}'s prompt is not a prefix of the chat {turns!r}")
        end = full.index(tokenizer.eos_id, len(prompt)) + 1
        spans.append((len(prompt), end))
    if spans[-1][1] != len(full):
        raise AssertionError(f"the chat does not end with the last answer's </s>: {turns!r}")
    return full, tuple(spans)


def prompt_ids(tokenizer: Tokenizer, question: str) -> list[int]:
    """The ids the runtime feeds for a single-turn question (with -200 for the picture)."""
    return conversation_ids(tokenizer, question)


def answer_ids(tokenizer: Tokenizer, question: str, answer: str) -> list[int]:
    """The ids of `answer` as they follow the prompt when the whole chat is tokenized (plus EOS)."""
    prompt = prompt_ids(tokenizer, question)
    full = conversation_ids(tokenizer, [(question, answer)])  # ends "... answer</s>"
    if full[: len(prompt)] != prompt or full[-1] != tokenizer.eos_id:
        raise AssertionError(f"answer tokens do not extend the prompt for {question!r} -> {answer!r}")
    return full[len(prompt):]


def pixels(image) -> np.ndarray:
    """(3, 336, 336) float32: exactly the runtime's `preprocess_image` (for a 336 x 336 picture its resize and
    crop change nothing, so this is the CLIP normalisation alone)."""
    return preprocess_image(image)[0]


GRID_TOKENS = 12  # the projector's 12 x 12 token grid; each token covers 28 x 28 pixels
# 0 = background
AUX_CLASSES = (1 + len(shapes.COLOURS), 1 + len(shapes.SHAPES), 1 + len(shapes.SIZES), shapes.GRID ** 2)


def token_labels(scene: shapes.Scene, min_cover: float = 0.1) -> np.ndarray:
    """(144, 4) int64: colour, shape and size class of the object covering each image token (0 = none),
    and the grid cell the token lies in (0..8, reading order; the 12 x 12 tokens tile the 3 x 3 cells exactly).

    Training-only targets for an auxiliary head on the projector output; they speed up learning the
    vision tower from scratch and are not part of the shipped model.
    """
    side = shapes.IMAGE_SIZE // GRID_TOKENS  # pixels per token side
    blocks = shapes.object_map(scene).reshape(GRID_TOKENS, side, GRID_TOKENS, side).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(GRID_TOKENS * GRID_TOKENS, side * side)
    counts = np.stack([np.bincount(row, minlength=len(scene.things) + 1) for row in blocks])
    counts[:, 0] = 0
    owner = counts.argmax(1)
    owner[counts.max(1) < min_cover * side * side] = 0
    table = np.zeros((len(scene.things) + 1, 3), np.int64)
    for i, thing in enumerate(scene.things):
        table[i + 1] = (1 + list(shapes.COLOURS).index(thing.colour), 1 + shapes.SHAPES.index(thing.shape),
                        1 + list(shapes.SIZES).index(thing.size))
    per_token = GRID_TOKENS // shapes.GRID
    rows, cols = np.divmod(np.arange(GRID_TOKENS * GRID_TOKENS), GRID_TOKENS)
    cell = (rows // per_token) * shapes.GRID + cols // per_token
    return np.concatenate([table[owner], cell[:, None]], axis=1)


TRAIN_KINDS = shapes.KINDS + conversations.NEW_KINDS + ("outside",)


def parse_weights(text: str) -> dict[str, float]:
    """'where=3,describe=2' -> {'where': 3.0, 'describe': 2.0} (kinds not named weigh 1)."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, value = part.partition("=")
        if kind not in TRAIN_KINDS:
            raise ValueError(f"question_weights: unknown kind {kind!r}; kinds are {', '.join(TRAIN_KINDS)}")
        weights[kind] = float(value)
    return weights


def question_subject(kind: str, question: str) -> tuple[int, int] | None:
    """(column, class) in `token_labels` of the image tokens a question is about: the named shape's tokens
    (colour, where, size, count, yes/no), the named colour's (shape, or no shape named); None for "describe",
    "detail", "count_all" and pictures from outside (every object, or none)."""
    words = question.lower().rstrip("?.").split()
    if kind in ("describe", "detail", "count_all", "outside"):
        return None
    plural_of = {plural: shape for shape, plural in shapes.PLURALS.items()}
    shape = next((plural_of.get(w, w) for w in words if w in shapes.SHAPES or w in plural_of), None)
    colour = next((w for w in words if w in shapes.COLOURS), None)
    if colour is not None and (kind == "shape" or shape is None):
        return 0, 1 + list(shapes.COLOURS).index(colour)
    return None if shape is None else (1, 1 + shapes.SHAPES.index(shape))


class Batches:
    """Seeded training batches: B fresh pictures, up to Q questions each, drawn from TRAIN_SEEDS."""

    CACHE_SIZE = 200_000  # tokenized chats kept
    PICTURES_PER_STEP = 128  # step s draws from the training seeds first_picture + 128 s ...: its own pictures

    def __init__(self, tokenizer: Tokenizer, config: TrainConfig):
        self.tokenizer, self.config = tokenizer, config
        self.rng = np.random.default_rng(config.seed)
        self.cache: dict[tuple, tuple[list[int], tuple]] = {}
        self.weights = parse_weights(config.question_weights)

    def encode(self, turns: tuple[tuple[str, str], ...]) -> tuple[list[int], tuple]:
        if turns not in self.cache:
            if len(self.cache) >= self.CACHE_SIZE:  # chats of several turns rarely repeat: start afresh
                self.cache.clear()
            self.cache[turns] = chat_ids(self.tokenizer, list(turns))
        return self.cache[turns]

    def max_objects(self, step: int) -> int | None:
        """Curriculum: the first `curriculum_steps` steps see only pictures with few objects."""
        if step >= self.config.curriculum_steps:
            return None
        return 1 + 3 * step // self.config.curriculum_steps  # 1, 2, 3

    def scenes(self, step: int):
        """The step's pictures: from its own PICTURES_PER_STEP training seeds on, those the curriculum allows."""
        seed = shapes.TRAIN_SEEDS.start + self.config.first_picture + step * self.PICTURES_PER_STEP
        max_objects = self.max_objects(step)
        while True:
            assert seed in shapes.TRAIN_SEEDS
            scene = shapes.make_scene(seed)
            if max_objects is None or len(scene.things) <= max_objects:
                yield scene
            seed += 1

    def pick_questions(self, kinds: list[str]) -> np.ndarray:
        """Up to `questions_per_image` distinct question indices, kinds weighted by `question_weights`."""
        if not self.weights:
            return self.rng.permutation(len(kinds))[: self.config.questions_per_image]
        n = min(len(kinds), self.config.questions_per_image)
        weights = np.asarray([self.weights.get(kind, 1.0) for kind in kinds])
        return self.rng.choice(len(kinds), n, replace=False, p=weights / weights.sum())

    def next_batch(self, step: int):
        """(images (B, 3, 336, 336) float32, [(image index, chat ids, answer spans, subjects)],
        labels (B, 144, 4) int64); a chat's ids hold the picture as IMAGE_TOKEN_INDEX, each answer span is
        (start, end) in them, one subject per turn as `question_subject` gives it."""
        config = self.config
        self.rng = np.random.default_rng([config.seed, step])  # a step's batch depends on the step alone
        images, samples, labels = [], [], []
        for b, scene in zip(range(config.images_per_step), self.scenes(step)):
            if config.outside_fraction and self.rng.random() < config.outside_fraction:
                image = conversations.outside_picture(scene.seed)
                qa = conversations.outside_questions(scene.seed, config.questions_per_image)
                labels.append(token_labels(shapes.Scene(scene.seed, [], scene.background)))
            else:
                image = shapes.render(scene)
                qa = scene.questions + (conversations.new_questions(scene) if config.max_turns > 1 or
                                        config.outside_fraction else [])
                labels.append(token_labels(scene))
            images.append(pixels(image))
            picks = [qa[i] for i in self.pick_questions([kind for kind, _, _ in qa])]
            picks = [(kind, conversations.vary(q, self.rng) if self.rng.random() < config.vary_fraction else q, a)
                     for kind, q, a in picks]
            while picks:
                n = int(self.rng.integers(1, config.max_turns + 1))
                chat = [(kind, conversations.follow_up(q, self.rng) if i else q, a)
                        for i, (kind, q, a) in enumerate(picks[:n])]
                picks = picks[n:]
                ids, spans = self.encode(tuple((q, a) for _, q, a in chat))
                samples.append((b, ids, spans, tuple(question_subject(kind, q) for kind, q, _ in chat)))
        return np.stack(images), samples, np.stack(labels)


def _produce(folder: str, config: TrainConfig, queue, first: int) -> None:
    torch.set_num_threads(1)
    batches = Batches(Tokenizer.from_folder(folder), config)
    for step in range(first, total_steps(config), config.workers):
        queue.put(batches.next_batch(step))


def _get(queue, worker):
    """The next batch; an error if the worker died (instead of waiting for ever)."""
    import queue as queues

    while True:
        try:
            return queue.get(timeout=5)
        except queues.Empty:
            if not worker.is_alive():
                raise RuntimeError(f"the batch worker stopped (exit code {worker.exitcode})") from None


def prefetched_batches(folder: Path, config: TrainConfig):
    """The same batches as `Batches(...).next_batch(step)` for step 0, 1, ..., drawn in `config.workers` other
    processes (worker w draws steps w, w + workers, ...).

    Drawing the pictures is a large share of a training step (docs/nano.md); a worker on the other core
    overlaps it with the model's work. A step's batch depends on the step alone, so the batches (and the trained
    weights) do not depend on timing or on the number of workers.
    """
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queues = [context.Queue(maxsize=4) for _ in range(config.workers)]
    workers = [context.Process(target=_produce, args=(str(folder), config, queue, w), daemon=True)
               for w, queue in enumerate(queues)]
    for worker in workers:
        worker.start()
    try:
        for step in range(total_steps(config)):
            w = step % config.workers
            images, samples, labels = _get(queues[w], workers[w])
            yield torch.from_numpy(images), samples, torch.from_numpy(labels)
    finally:
        for worker in workers:
            worker.terminate()
            worker.join()


def train_image_features(model: MobileVLM, pixel_values: torch.Tensor, train_vision: bool = True) -> torch.Tensor:
    """`get_image_features` without running the last CLIP layer, whose output layer -2 never uses.

    The CLIP layers are called one by one (swapping the layer list would confuse transformers' lazily
    installed output hooks); `check_image_features` shows the result equals `get_image_features`.
    """
    tower = model.vision_tower
    tower = tower.vision_model if hasattr(tower, "vision_model") else tower
    with torch.set_grad_enabled(train_vision and torch.is_grad_enabled()):
        hidden = tower.pre_layrnorm(tower.embeddings(pixel_values))
        layers = tower.encoder.layers
        for layer in layers[: len(layers) + 1 + model.config.vision_select_layer]:
            out = layer(hidden, None)
            hidden = out[0] if isinstance(out, tuple) else out  # (B, 577, D)
    return model.mm_projector(hidden[:, 1:])  # (B, 144, C)


def aux_loss(head: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor,
             object_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the per-token colour / shape / size / cell head on the projector output; tokens on
    an object weigh `object_weight` times more (most tokens are background, and shape is the hard part)."""
    logits = head(features).split(list(AUX_CLASSES), dim=-1)
    weight = (1.0 + (object_weight - 1.0) * (labels[..., 0] > 0).float()).reshape(-1)
    total = 0
    for i, attribute_logits in enumerate(logits):
        loss = F.cross_entropy(attribute_logits.reshape(-1, attribute_logits.shape[-1]), labels[..., i].reshape(-1),
                               reduction="none")
        total = total + (loss * weight).sum() / weight.sum()
    return total


def loss_fn(model: MobileVLM, pixel_values: torch.Tensor, samples,
            features: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over answer tokens + EOS for a batch of (image index, prompt ids, answer ids, subject)."""
    if features is None:
        features = train_image_features(model, pixel_values)  # (B, 144, C)
    return packed_losses(model, features, samples)[0]


def packed_losses(model: MobileVLM, features: torch.Tensor, samples,
                  labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The answer loss, and with the per-token `labels` the lookup loss (`lookup_loss`), in one forward pass.

    All questions about one picture are packed into one row: the shared prefix (system text + the 144
    image tokens) once, then each question + answer, with a mask that lets every question see the prefix
    and itself only, and position ids that restart after the prefix for every question. Causal attention
    makes this exactly the loss of the separate single-turn sequences (see `reference_loss`), at a
    fraction of the cost.
    """
    n_images, n_image_tokens = features.shape[:2]
    prefixes = {tuple(ids[: ids.index(IMAGE_TOKEN_INDEX)]) for _, ids, _, _ in samples}
    assert len(prefixes) == 1, "every prompt starts with the same system text"
    prefix = list(prefixes.pop())
    shared = len(prefix) + n_image_tokens
    tails: list[list[tuple[list[int], list[tuple[int, int]], tuple]]] = [[] for _ in range(n_images)]
    for image_index, chat, spans, subjects in samples:
        cut = chat.index(IMAGE_TOKEN_INDEX) + 1  # spans move from the chat's ids to the tail's
        tails[image_index].append((chat[cut:], [(a - cut, b - cut) for a, b in spans], subjects))
    length = shared + max(sum(len(t) for t, _, _ in row) for row in tails)
    ids = torch.zeros(n_images, length - shared, dtype=torch.long)
    positions = torch.arange(length).repeat(n_images, 1)
    target = torch.full((n_images, length), -100, dtype=torch.long)
    segment = torch.full((n_images, length), -1, dtype=torch.long)  # -1 prefix, j >= 0 question j, -2 padding
    lookups = []  # (row, position of the last prompt token, subject)
    for b, row in enumerate(tails):
        at = shared
        segment[b, at:] = -2
        for j, (tail, spans, subjects) in enumerate(row):
            ids[b, at - shared: at - shared + len(tail)] = torch.tensor(tail)
            positions[b, at: at + len(tail)] = torch.arange(shared, shared + len(tail))
            for (start, end), subject in zip(spans, subjects):
                target[b, at + start: at + end] = torch.tensor(tail[start:end])
                if subject is not None:
                    lookups.append((b, at + start - 1, subject))
            segment[b, at: at + len(tail)] = j
            at += len(tail)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    query, key = segment[:, :, None], segment[:, None, :]
    visible = causal & ((key == -1) | (key == query))
    visible |= torch.eye(length, dtype=torch.bool)  # padding rows attend to themselves (no empty softmax)
    embeds = torch.cat([model.embed_tokens(torch.tensor([prefix])).expand(n_images, -1, -1), features,
                        model.embed_tokens(ids)], dim=1)
    captured = {}
    attention = model.language_model.model.layers[-1].self_attn
    hook = attention.register_forward_pre_hook(lambda _, args, kwargs: captured.update(kwargs),
                                               with_kwargs=True) if labels is not None else None
    try:
        hidden = model.language_model.model(inputs_embeds=embeds, attention_mask=visible[:, None],
                                            position_ids=positions).last_hidden_state
    finally:
        if hook is not None:
            hook.remove()
    next_labels = target[:, 1:]  # position t predicts token t+1 (never across questions: see the targets)
    keep = next_labels != -100
    logits = model.language_model.lm_head(hidden[:, :-1][keep])
    answer_loss = F.cross_entropy(logits, next_labels[keep])
    if labels is None or not lookups:
        return answer_loss, None
    return answer_loss, lookup_loss(attention, captured["hidden_states"], captured["position_embeddings"], visible,
                                    lookups, labels, image_start=len(prefix))


def lookup_loss(attention: torch.nn.Module, hidden: torch.Tensor, position_embeddings, visible: torch.Tensor,
                lookups, labels: torch.Tensor, image_start: int) -> torch.Tensor:
    """-log(attention mass on the subject's image tokens) of head 0 of the last layer, from the token that
    predicts the first answer token, averaged over questions that name one subject.

    A training-only hint, like the per-token head: the language model learned to look up "the triangle"
    for "what colour is the triangle?" but answered "where is the triangle?" with the place of whichever
    object it looked at (all of its "where" errors on held-out pictures with several objects). Supervising
    one head to find the named object gives every kind of question the same lookup.
    """
    rows, at, column, wanted = torch.tensor([(b, t, c, k) for b, t, (c, k) in lookups]).T
    on_subject = labels[rows, :, column] == wanted[:, None]  # (N, 144)
    has_subject = on_subject.any(1)  # "how many stars?" with no star has nothing to find
    dim = attention.head_dim
    cos, sin = position_embeddings  # (B, L, D)
    q = attention.q_proj(hidden[rows, at])[:, :dim]  # (N, D), head 0
    k = attention.k_proj(hidden[rows])[..., :dim]  # (N, L, D)
    q = q * cos[rows, at] + rotate_half(q) * sin[rows, at]  # RoPE, as transformers applies it
    k = k * cos[rows] + rotate_half(k) * sin[rows]
    scores = (k @ q[:, :, None])[..., 0] / dim**0.5  # (N, L)
    scores = scores.masked_fill(~visible[rows, at], float("-inf"))
    log_weights = scores.log_softmax(-1)[:, image_start: image_start + labels.shape[1]]  # (N, 144)
    mass = log_weights.masked_fill(~on_subject, float("-inf")).logsumexp(-1)  # log of the mass on the subject
    return -mass[has_subject].mean() if has_subject.any() else hidden.new_zeros(())


def reference_loss(model: MobileVLM, pixel_values: torch.Tensor, samples) -> torch.Tensor:
    """The same loss over full, independent chats (slow; used to check `loss_fn`)."""
    features = model.get_image_features(pixel_values)
    losses, n_tokens = [], 0
    for image_index, ids, spans, _ in samples:
        at = ids.index(IMAGE_TOKEN_INDEX)
        embeds = torch.cat([model.embed_tokens(torch.tensor(ids[:at])), features[image_index],
                            model.embed_tokens(torch.tensor(ids[at + 1:]))])[None]
        logits = model.language_model(inputs_embeds=embeds).logits[0]
        shift = features.shape[1] - 1  # the picture's one id became 144 positions
        for start, end in spans:
            losses.append(F.cross_entropy(logits[start + shift - 1: end + shift - 1], torch.tensor(ids[start:end]),
                                          reduction="sum"))
            n_tokens += end - start
    return torch.stack(losses).sum() / n_tokens


# --- evaluation (torch, greedy) ------------------------------------------------------------------


@torch.no_grad()
def torch_answer(model: MobileVLM, tokenizer: Tokenizer, image, question: str, max_new_tokens: int = 24,
                 history: list[tuple[str, str]] = ()) -> str:
    pixel_values = torch.from_numpy(preprocess_image(image))
    new_ids = model.generate(conversation_ids(tokenizer, list(history) + [(question, None)]), pixel_values,
                             max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_id)
    return tokenizer.decode(new_ids).strip()


@torch.no_grad()
def quick_accuracy(model: MobileVLM, tokenizer: Tokenizer, n: int) -> tuple[float, dict]:
    model.eval()
    per_kind: dict[str, list[int]] = {}
    pictures: dict[int, object] = {}
    for seed, kind, question, answer in shapes.heldout_questions(n):
        if seed not in pictures:
            pictures = {seed: shapes.picture(seed)[0]}
        got = torch_answer(model, tokenizer, pictures[seed], question)
        per_kind.setdefault(kind, []).append(int(got == answer))
    model.train()
    total = sum(sum(v) for v in per_kind.values()) / max(1, sum(len(v) for v in per_kind.values()))
    return total, {k: round(sum(v) / len(v), 3) for k, v in per_kind.items()}


@torch.no_grad()
def quick_new_accuracy(model: MobileVLM, tokenizer: Tokenizer, n: int) -> dict:
    """Torch accuracy on about `n` questions of each issue-14 held-out set (follow-ups: turns 2-4 only)."""
    model.eval()
    out = {}
    for name in conversations.HELDOUT_SETS:
        chats = conversations.heldout_set(name, n)[: max(1, n // 4) if name == "followup" else n]
        right = []
        for key, turns in chats[: (3 if name == "outside" else len(chats))]:
            image, history = conversations.heldout_picture(key), []
            for i, (_, question, expected) in enumerate(turns[: (n // 3 if name == "outside" else len(turns))]):
                got = torch_answer(model, tokenizer, image, question, 160, history)
                history.append((question, got))
                if name != "followup" or i:
                    right.append(int(got == expected))
        out[name] = round(sum(right) / max(1, len(right)), 3)
    model.train()
    return out


@torch.no_grad()
def aux_accuracy(model: MobileVLM, head: torch.nn.Module, n_pictures: int = 32) -> list[float]:
    """Per-token accuracy of the training-only head on held-out pictures (object tokens; all tokens for the cell)."""
    scenes = [shapes.make_scene(seed) for seed in shapes.HELDOUT_SEEDS[:n_pictures]]
    images = torch.from_numpy(np.stack([pixels(shapes.render(scene)) for scene in scenes]))
    labels = torch.from_numpy(np.stack([token_labels(scene) for scene in scenes]))
    model.eval()
    logits = head(train_image_features(model, images)).split(list(AUX_CLASSES), dim=-1)
    model.train()
    on_object = labels[..., 0] > 0
    out = []
    for i, attribute_logits in enumerate(logits):
        keep = on_object if i < 3 else torch.ones_like(on_object)
        out.append(round(float((attribute_logits.argmax(-1)[keep] == labels[..., i][keep]).float().mean()), 3))
    return out


# --- main --------------------------------------------------------------------------------------


def build_model(config: TrainConfig, vocab_size: int) -> tuple[MobileVLM, dict]:
    spec = TinySpec(projector_type="ldpnetv2", hidden_size=config.hidden_size,
                    intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
                    num_attention_heads=config.num_attention_heads, vision_hidden_size=config.vision_hidden_size,
                    vision_layers=config.vision_layers, vision_heads=config.vision_heads,
                    vision_intermediate_size=config.vision_intermediate_size, context_length=512)
    model_config = tiny_config(spec, vocab_size)
    model_config["_name_or_path"] = MODEL_ID
    torch.manual_seed(config.seed)
    model = MobileVLM(MobileVLMConfig.from_dict(model_config))
    if config.local_attention:
        init_local_attention(model, tuple(float(x) for x in config.local_attention.split(",")))
    return model, model_config


@torch.no_grad()
def init_local_attention(model: MobileVLM, sharpness: tuple[float, ...]) -> None:
    """Start the ViT looking locally: a from-scratch ViT learns *shape* very slowly otherwise.

    transformers initialises CLIP's position embeddings with std 0.02 and random query/key weights, so
    at first every patch attends to all 576 others almost uniformly and gathers no local outline; it
    takes thousands of steps to learn locality (ConViT, d'Ascoli et al. 2021, makes the same point).
    Here the first `head_dim` channels of the residual stream hold a 2D sin-cos grid of the patch
    position (and no pixel content), and every attention head's query and key read exactly those
    channels, scaled so that head h attends mostly to patches within about 1/sqrt(sharpness[h]) patches
    of itself. Everything stays trainable and in the plain CLIP format.
    """
    tower = model.vision_tower
    tower = tower.vision_model if hasattr(tower, "vision_model") else tower
    embeddings, layers = tower.embeddings, tower.encoder.layers
    attention = layers[0].self_attn
    head_dim = attention.head_dim
    table = embeddings.position_embedding.weight  # (1 + side*side, D)
    side = int(round((table.shape[0] - 1) ** 0.5))
    quarter = head_dim // 4
    omega = torch.tensor([1.2 / 2**k for k in range(quarter)], dtype=torch.float64)  # radians per patch
    ys, xs = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                            indexing="ij")
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        angles = coord[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    table.zero_()
    table[1:, : 4 * quarter] = torch.cat(parts, dim=1).to(table.dtype)  # (side*side, head_dim)
    embeddings.patch_embedding.weight[:head_dim] = 0  # those channels carry position only
    for layer in layers:
        attention = layer.self_attn
        for h in range(attention.embed_dim // head_dim):
            # logits ~ sharpness * sum over frequencies of cos(omega * distance) (after layer norm, roughly)
            scale = math.sqrt(sharpness[h % len(sharpness)] * math.sqrt(head_dim) / 3.3)
            rows = slice(h * head_dim, (h + 1) * head_dim)
            for proj in (attention.q_proj, attention.k_proj):
                proj.weight[rows] = 0
                proj.weight[rows, :head_dim] = torch.eye(head_dim) * scale
                proj.bias[rows] = 0


def build_aux_head(config: TrainConfig) -> torch.nn.Module:
    if not config.aux_hidden:
        return torch.nn.Linear(config.hidden_size, sum(AUX_CLASSES))
    return torch.nn.Sequential(torch.nn.Linear(config.hidden_size, config.aux_hidden), torch.nn.GELU(),
                               torch.nn.Linear(config.aux_hidden, sum(AUX_CLASSES)))


def total_steps(config: TrainConfig) -> int:
    return config.vision_steps + config.steps


def lr_at(step: int, config: TrainConfig) -> float:
    """Warm-up, constant through the vision-only phase (annealed there too when the ViT is frozen after it),
    warm-up again (the language model starts then), then cosine down to `min_lr_ratio`."""
    if step < config.vision_steps:
        if not config.freeze_vision:
            return config.lr * min(1.0, (step + 1) / config.warmup_steps)
        length = config.vision_steps
    else:
        step, length = step - config.vision_steps, config.steps
    warm = min(1.0, (step + 1) / config.warmup_steps)
    progress = step / max(1, length)
    return warm * config.lr * (config.min_lr_ratio
                               + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def save_checkpoint(model: MobileVLM, model_config: dict, folder: Path) -> None:
    state = {k: v.detach().to(torch.bfloat16) for k, v in model.checkpoint_state().items()}
    for old in folder.glob("pytorch_model*.bin"):
        old.unlink()
    save_weights(state, folder, "bin")
    (folder / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps(
        {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
         "transformers_version": "4.33.1"}, indent=2) + "\n")


def train(out: Path, config: TrainConfig, max_minutes: float | None = None, log=print) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    out.mkdir(parents=True, exist_ok=True)
    if config.init:  # a continuation: the given checkpoint's weights and tokenizer
        init = Path(config.init)
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            if (init / name).resolve() != (out / name).resolve():
                (out / name).write_bytes((init / name).read_bytes())
        tokenizer = Tokenizer.from_folder(out)
        model_config = json.loads((init / "config.json").read_text())
        model = MobileVLM.from_folder(init, dtype=torch.float32).train()
    else:
        tokenizer = train_tokenizer(out, config.vocab_size, config.seed)
        model, model_config = build_model(config, tokenizer.vocab_size)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters, vocab {tokenizer.vocab_size}; {config}")
    aux_head = build_aux_head(config)  # training only, never saved
    named = list(model.named_parameters()) + [("aux_head." + n, p) for n, p in aux_head.named_parameters()]
    decay = [p for n, p in named if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in named if not (p.dim() >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
    batches = prefetched_batches(out, config)
    model.train()
    history = []
    smoothed = None
    step = 0
    n_steps = total_steps(config)
    for step in range(n_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        pixel_values, samples, labels = next(batches)
        vision_phase = step < config.vision_steps
        if step in (0, config.vision_steps):
            torch.set_num_threads(1 if vision_phase else config.threads)
        # a continuation (`init`) spends its vision phase fitting the new per-token head to the trained features
        # alone: a random head's gradients would otherwise scramble the features in the first steps
        probe_only = vision_phase and bool(config.init)
        features = train_image_features(model, pixel_values, train_vision=(vision_phase and not probe_only) or (
            not vision_phase and not config.freeze_vision))
        extra = aux_loss(aux_head, features.detach() if probe_only else features, labels,
                         config.object_weight) if config.aux_weight else torch.zeros(())
        lookup = None
        if vision_phase:  # vision phase: the language model waits for useful image tokens
            lm_loss = torch.zeros(())
            loss = extra
        else:
            lm_loss, lookup = packed_losses(model, features, samples, labels if config.lookup_weight else None)
            loss = lm_loss + config.aux_weight * extra + (config.lookup_weight * lookup if lookup is not None else 0)
            smoothed = lm_loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * lm_loss.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        elapsed = time.perf_counter() - started
        if step % 25 == 0 or step == n_steps - 1:
            looked = f"lookup {lookup.item():.3f}  " if not vision_phase and lookup is not None else ""
            log(f"step {step:5d}  loss {lm_loss.item():.4f}  (avg {smoothed or 0:.4f})  aux {extra.item():.3f}  "
                f"{looked}lr {lr_at(step, config):.2e}  "
                f"{elapsed / 60:.2f} min")
        if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < n_steps:
            probe = aux_accuracy(model, aux_head)
            log(f"  held-out per-token accuracy of the vision features (colour, shape, size, cell): {probe}")
            if step >= config.vision_steps:
                accuracy, per_kind = quick_accuracy(model, tokenizer, config.eval_questions)
                log(f"  held-out accuracy (torch, {config.eval_questions} questions): {accuracy:.3f} {per_kind}")
                new = quick_new_accuracy(model, tokenizer, 24)
                log(f"  issue-14 sets (torch, ~24 questions each): {new}")
                history.append({"step": step + 1, "accuracy": accuracy, "per_kind": per_kind, "probe": probe,
                                "sets": new})
        if max_minutes and elapsed > max_minutes * 60:
            log(f"stopping early at step {step + 1}: the {max_minutes} minute budget is spent")
            break
    batches.close()  # stops the workers
    save_checkpoint(model, model_config, out)
    model = MobileVLM.from_folder(out)  # the shipped (bf16) weights, as the loader reads them
    accuracy, per_kind = quick_accuracy(model, tokenizer, config.eval_questions)
    log(f"final held-out accuracy (torch, bf16 weights, {config.eval_questions} questions): {accuracy:.3f} {per_kind}")
    new = quick_new_accuracy(model, tokenizer, 24)
    log(f"final issue-14 sets (torch, ~24 questions each): {new}")
    minutes = (time.perf_counter() - started) / 60
    log(f"done in {minutes:.1f} min; saved to {out}")
    summary = {"config": asdict(config), "parameters": n_params, "minutes": round(minutes, 1),
               "steps_done": step + 1, "final_loss": smoothed, "quick_accuracy": accuracy, "per_kind": per_kind,
               "sets": new,
               "history": history, "torch": torch.__version__}
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR)
    parser.add_argument("--minutes", type=float, default=None, help="stop early after this many minutes")
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        kind = (lambda text: text.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    args = parser.parse_args(argv)
    config = TrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    train(args.out, config, args.minutes, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
