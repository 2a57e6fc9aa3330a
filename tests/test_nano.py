"""The bundled nano MobileVLM: its files, the public loader path, and its accuracy on held-out pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mvlm_magic.demo import BUNDLED_DIR, bundled_model, conversations, shapes

MIN_ACCURACY = 0.95  # issues 4 and 14, every kind; the shipped (twelfth) weights: 99.5 % through OpenVINO int8
HELDOUT_QUESTIONS = 600  # the whole held-out benchmark of docs/nano.md (also tools/nano/evaluate.py)


def test_bundled_checkpoint_is_in_mtgv_format():
    folder = bundled_model()
    assert folder == BUNDLED_DIR
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "mobilevlm"
    assert config["mm_projector_type"] == "ldpnetv2"
    assert config["mm_vision_select_layer"] == -2
    assert config["vision_config"]["image_size"] == 336 and config["vision_config"]["patch_size"] == 14
    assert config["mm_hidden_size"] == config["vision_config"]["hidden_size"]
    for name in ("pytorch_model.bin", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json"):
        assert (folder / name).is_file(), name
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert total <= 25 * 2**20


def test_bundled_weights_use_the_real_key_names():
    torch = pytest.importorskip("torch")
    state = torch.load(bundled_model() / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert "model.mm_projector.mlp.mlp.0.weight" in state and "model.mm_projector.peg.peg.0.weight" in state
    assert "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight" in state
    assert "model.embed_tokens.weight" in state and "lm_head.weight" in state
    assert {t.dtype for t in state.values()} == {torch.bfloat16}


def test_bundled_model_loads_with_the_public_loader_and_answers(nano_engine):
    seed = shapes.HELDOUT_SEEDS.start
    picture, questions = shapes.picture(seed)
    kind, question, expected = questions[0]
    answer = nano_engine.ask(picture, question, max_new_tokens=24)
    assert answer.finish_reason == "eos"
    assert answer.text  # a short answer, then </s>


def test_int8_accuracy_on_the_heldout_benchmark(nano_engine):
    from tools.nano.evaluate import score

    questions = shapes.heldout_questions(HELDOUT_QUESTIONS)
    result = score(lambda picture, question: nano_engine.ask(picture, question, max_new_tokens=24).text, questions)
    assert result["questions"] == HELDOUT_QUESTIONS
    assert min(result["per_kind"].values()) >= MIN_ACCURACY, result["per_kind"]


def test_int4_operations_accuracy_on_the_heldout_benchmark(cache_dir):
    """Our operations (int8 activations; with the AVX-512 build the vision model's too) answer as well as the bar:
    OpenVINO's f32 int4 answers 99.3 % with the twelfth weights."""
    from mvlm_magic.loader import load_engine
    from mvlm_magic.ops import cpu
    from tools.nano.evaluate import score

    if not cpu.NEEDED_FLAGS <= cpu.cpu_flags():
        pytest.skip("needs an AVX2 CPU")
    engine = load_engine(bundled_model(), "int4", cache_dir=cache_dir, ops="on")
    assert engine.ops == "int4" and engine.vision_ops == (cpu.instruction_set() == "avx512")
    questions = shapes.heldout_questions(HELDOUT_QUESTIONS)
    result = score(lambda picture, question: engine.ask(picture, question, max_new_tokens=24).text, questions)
    assert min(result["per_kind"].values()) >= MIN_ACCURACY, result["per_kind"]


SET_QUESTIONS = 100  # per issue-14 set in CI (docs/nano.md: the same 100 per set at int8 and int4)


def test_int8_accuracy_on_the_classroom_sets(nano_engine):
    """Issue 14: follow-ups, absent things, yes/no, counting all / by colour / one kind, detailed descriptions,
    re-spelled questions and pictures from outside the shapes world, each held out, through the int8 export."""
    pytest.importorskip("skimage")
    from tools.nano.evaluate import BARS, openvino_chat_starter, score_chats, set_accuracy

    start = openvino_chat_starter(bundled_model(), "int8", engine=nano_engine)
    figures = {}
    for name in conversations.HELDOUT_SETS:
        figures[name] = set_accuracy(name, score_chats(start, conversations.heldout_set(name, SET_QUESTIONS)))
    below = {name: round(value, 3) for name, value in figures.items() if value < BARS[name]}
    assert not below, f"below the bar: {below}; all: {figures}"


# --- the generator ------------------------------------------------------------------------------


def test_pictures_are_seeded_and_splits_never_share_a_picture():
    a, qa_a = shapes.picture(123)
    b, qa_b = shapes.picture(123)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and qa_a == qa_b
    assert a.size == (336, 336) and a.mode == "RGB"
    assert not set(range(shapes.TRAIN_SEEDS.start, shapes.TRAIN_SEEDS.stop, 10**6)) & set(shapes.HELDOUT_SEEDS)
    assert shapes.TRAIN_SEEDS.stop <= shapes.HELDOUT_SEEDS.start
    heldout = shapes.heldout_questions(600)
    assert all(seed in shapes.HELDOUT_SEEDS for seed, *_ in heldout)
    assert {kind for _, kind, _, _ in heldout} == set(shapes.KINDS)


def test_answers_match_the_scene():
    for seed in range(40):
        scene = shapes.make_scene(seed)
        for kind, question, answer in scene.questions:
            if kind == "colour":
                assert answer in shapes.COLOURS
            elif kind == "count":
                shape = next(s for s in shapes.SHAPES if shapes.PLURALS[s] in question)
                assert answer == str(scene.count(shape))
            elif kind == "where":
                assert answer in {n for row in shapes.CELL_NAMES for n in row}
            elif kind == "shape":
                assert answer in shapes.SHAPES
            elif kind == "size":
                assert answer in shapes.SIZES
            else:
                assert answer.startswith(("a ", "an "))


def _small_model_and_batch(tmp_path, double: bool = True):
    """A small nano-shaped model and one training batch: (model, pixel_values, samples, labels)."""
    torch = pytest.importorskip("torch")
    from tools.nano import train

    config = _small_config(train)
    tokenizer = train.train_tokenizer(tmp_path, config.vocab_size, 0)
    model, _ = train.build_model(config, tokenizer.vocab_size)
    pixel_values, samples, labels = train.Batches(tokenizer, config).next_batch(10**5)
    pixel_values, labels = torch.from_numpy(pixel_values), torch.from_numpy(labels)
    if double:
        model, pixel_values = model.double(), pixel_values.double()
    return model, pixel_values, samples, labels


def test_packed_training_loss_equals_separate_sequences(tmp_path):
    torch = pytest.importorskip("torch")
    from tools.nano import train

    model, pixel_values, samples, _ = _small_model_and_batch(tmp_path)
    with torch.no_grad():
        packed = train.loss_fn(model, pixel_values, samples)
        separate = train.reference_loss(model, pixel_values, samples)
        features = train.train_image_features(model, pixel_values)
        assert torch.allclose(features, model.get_image_features(pixel_values), atol=1e-10)
    assert abs(packed.item() - separate.item()) < 1e-9


def test_lookup_loss_is_the_attention_mass_on_the_named_object(tmp_path):
    torch = pytest.importorskip("torch")
    from mvlm_magic.model.mobilevlm import IMAGE_TOKEN_INDEX
    from tools.nano import train

    model, pixel_values, samples, labels = _small_model_and_batch(tmp_path)
    with torch.no_grad():
        features = train.train_image_features(model, pixel_values)
        answer_loss, lookup = train.packed_losses(model, features, samples, labels)
        assert answer_loss.item() == pytest.approx(train.loss_fn(model, pixel_values, samples).item(), abs=1e-12)
        # reference: each question alone, head 0 of the last layer's attention weights, as transformers computes them
        model.language_model.config._attn_implementation = "eager"
        losses = []
        for image_index, ids, spans, subjects in samples:
            for (start, _), subject in zip(spans, subjects):  # every turn's prompt, earlier answers included
                prompt = ids[:start]
                at = prompt.index(IMAGE_TOKEN_INDEX)
                on_subject = labels[image_index, :, subject[0]] == subject[1] if subject else None
                if on_subject is None or not on_subject.any():
                    continue
                embeds = torch.cat([model.embed_tokens(torch.tensor(prompt[:at])), features[image_index],
                                    model.embed_tokens(torch.tensor(prompt[at + 1:]))])[None]
                weights = model.language_model.model(inputs_embeds=embeds, output_attentions=True).attentions[-1]
                losses.append(-weights[0, 0, -1, at: at + 144][on_subject].sum().log())
    assert losses and lookup.item() == pytest.approx(torch.stack(losses).mean().item(), abs=1e-6)  # eager: f32 softmax


def test_question_subjects_name_the_tokens_to_look_at():
    from tools.nano import train

    assert train.question_subject("colour", "What colour is the triangle?") == (1, 1 + shapes.SHAPES.index("triangle"))
    assert train.question_subject("count", "How many crosses are there?") == (1, 1 + shapes.SHAPES.index("cross"))
    assert train.question_subject("shape", "What is the orange shape?") == (0, 1 + list(shapes.COLOURS).index("orange"))
    assert train.question_subject("describe", "What do you see?") is None


# --- training aids ------------------------------------------------------------------------------


def _small_config(train, **overrides):
    fields = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  vision_hidden_size=16, vision_layers=2, vision_heads=2, vision_intermediate_size=32,
                  images_per_step=2, questions_per_image=3)
    return train.TrainConfig(**{**fields, **overrides})


def test_prefetched_batches_are_the_seeded_batches(tmp_path):
    torch = pytest.importorskip("torch")
    from tools.nano import train

    config = _small_config(train, vision_steps=2, steps=3, workers=2)  # a step's batch is the step's, whoever drew it
    tokenizer = train.train_tokenizer(tmp_path, config.vocab_size, 0)
    direct = train.Batches(tokenizer, config)
    for step, (images, samples, labels) in enumerate(train.prefetched_batches(tmp_path, config)):
        want_images, want_samples, want_labels = direct.next_batch(step)
        assert torch.equal(images, torch.from_numpy(want_images)) and samples == want_samples
        assert torch.equal(labels, torch.from_numpy(want_labels))
    assert step == train.total_steps(config) - 1


def test_tokenized_chats_cache_starts_afresh_when_full(tmp_path):
    from tools.nano import train

    config = _small_config(train)
    tokenizer = train.train_tokenizer(tmp_path, config.vocab_size, 0)
    batches = train.Batches(tokenizer, config)
    batches.CACHE_SIZE = 2  # a long run fills it with chats of several turns (a KeyError once ended a run)
    chats = [(("What colour is the star?", answer),) for answer in ("red", "blue", "green", "red")]
    assert [batches.encode(chat) for chat in chats] == [train.chat_ids(tokenizer, list(chat)) for chat in chats]
    assert len(batches.cache) <= 2


def test_token_labels_mark_objects_and_cells():
    from tools.nano import train

    scene = shapes.make_scene(5)
    labels = train.token_labels(scene)
    assert labels.shape == (144, 4)
    assert set(labels[:, 3]) == set(range(9))  # every cell is 4 x 4 tokens
    for thing in scene.things:  # each object is labelled inside its own cell, with its own classes
        in_cell = labels[labels[:, 3] == thing.row * 3 + thing.col]
        shape_class = 1 + shapes.SHAPES.index(thing.shape)
        assert (in_cell[:, 1] == shape_class).any() and set(in_cell[:, 1]) <= {0, shape_class}


def test_local_attention_init_makes_the_vit_look_nearby():
    torch = pytest.importorskip("torch")
    from tools.nano import train

    config = train.TrainConfig()  # the shipped recipe's vision tower
    model, _ = train.build_model(config, 512)
    tower = model.vision_tower
    picture = torch.from_numpy(train.pixels(shapes.picture(7)[0]))[None]
    with torch.no_grad():
        hidden = tower.pre_layrnorm(tower.embeddings(picture))
        layer = tower.encoder.layers[0]
        normed = layer.layer_norm1(hidden)
        attention = layer.self_attn
        heads, dim = attention.embed_dim // attention.head_dim, attention.head_dim
        q = attention.q_proj(normed)[0].view(-1, heads, dim).transpose(0, 1)
        k = attention.k_proj(normed)[0].view(-1, heads, dim).transpose(0, 1)
        weights = torch.softmax(q @ k.transpose(1, 2) / dim**0.5, dim=-1)  # (heads, 577, 577)
    centre = 1 + 12 * 24 + 12
    nearby = weights[:, centre, 1:].view(heads, 24, 24)[:, 10:15, 10:15].sum((1, 2))  # 5 x 5 patches of 576
    assert nearby.max() > 0.5, nearby  # uniform attention would put 25/577 = 0.04 there


def test_joint_phase_leaves_the_vision_tower_frozen(tmp_path):
    from tools.nano import train

    model, pixel_values, samples, _ = _small_model_and_batch(tmp_path, double=False)
    features = train.train_image_features(model, pixel_values, train_vision=False)
    train.loss_fn(model, pixel_values, samples, features).backward()
    vit = [p for n, p in model.named_parameters() if "vision_tower" in n]
    assert vit and all(p.grad is None for p in vit)  # no gradient, so no update and no backward cost
    assert all(p.grad is not None for n, p in model.named_parameters() if "mm_projector" in n)  # it still trains


def test_question_weights_favour_the_named_kinds():
    from tools.nano import train

    with pytest.raises(ValueError, match="unknown kind 'were'"):
        train.parse_weights("were=3")
    config = train.TrainConfig(questions_per_image=1, question_weights="where=50")
    batches = train.Batches(tokenizer=None, config=config)
    kinds = ["colour", "count", "where", "size"]
    picks = [kinds[int(batches.pick_questions(kinds)[0])] for _ in range(200)]
    assert picks.count("where") > 150  # 50 / 53 of the picks expected
    few = train.Batches(tokenizer=None, config=train.TrainConfig(questions_per_image=8))
    assert sorted(few.pick_questions(["colour"] * 3)) == [0, 1, 2]  # never more questions than a picture has


# --- issue 14: classroom conversations ----------------------------------------------------------------


def test_new_questions_match_the_scene_and_keep_the_old_ones():
    for seed in range(60):
        scene = shapes.make_scene(seed)
        assert scene.questions == shapes.make_scene(seed).questions  # the old benchmark does not move
        present = {t.shape for t in scene.things}
        for kind, question, answer in conversations.new_questions(scene):
            if kind == "absent":
                missing = answer.removeprefix("There is no ").removesuffix(".").removesuffix(" object")
                assert missing not in present | {t.colour for t in scene.things} and missing in question
            elif kind == "yesno":  # the answer is the picture's, whatever the template
                words = question.rstrip("?").split()
                colour = words[3] if words[3] in shapes.COLOURS else None
                shape = next((s for s in shapes.SHAPES if words[-1] in (s, shapes.PLURALS[s])), None)
                truth = any((shape is None or t.shape == shape) and (colour is None or t.colour == colour)
                            for t in scene.things)
                assert answer == ("yes" if truth else "no"), (question, answer)
            elif kind == "count_all":
                assert answer == str(len(scene.things))
            elif kind == "count_colour":
                colour = next(c for c in shapes.COLOURS if c in question)
                assert answer == str(sum(t.colour == colour for t in scene.things))
            else:
                assert kind == "detail" and answer.count(".") == len(scene.things)
    busy = next(shapes.make_scene(s) for s in range(1000) if len(shapes.make_scene(s).things) >= 7)
    assert conversations.describe_in_detail(busy.things).startswith(("A ", "An "))


def test_counting_one_kind_is_a_set_of_its_own():
    chats = conversations.heldout_set("count_shape", 600)
    assert sum(len(turns) for _, turns in chats) >= 600
    for seed, [(kind, question, answer)] in chats[:100]:
        scene = shapes.make_scene(seed)
        shape = next(s for s in shapes.SHAPES if shapes.PLURALS[s] in question)
        assert kind == "count" and answer == str(scene.count(shape)), (seed, question, answer)
    assert {answer for _, [(_, _, answer)] in chats} >= {"0", "1", "2", "3"}


def test_vary_keeps_the_question_readable():
    rng = np.random.default_rng(0)
    variants = {conversations.vary("What colour is the triangle?", rng) for _ in range(200)}
    assert "What color is the triangle?" in variants and "what colour is the triangle?" in variants
    assert "WHAT COLOUR IS THE TRIANGLE?" in variants and "What colour is a triangle?" in variants
    assert "What colour is the triangle" in variants
    pictures = {conversations.vary("Describe the image in detail.", rng) for _ in range(200)}
    assert "Describe the picture in detail." in pictures and "Describe the photo in detail." in pictures
    assert "Describe the picture in every detail." in pictures and "Describe the image in detail." in pictures


def test_chat_ids_mark_every_answer(tmp_path):
    from mvlm_magic.runtime.tokenizer import Tokenizer, conversation_ids
    from tools.nano import train

    tokenizer = Tokenizer.from_folder(bundled_model())
    turns = [("What colour is the star?", "red"), ("And where is the square?", "There is no square.")]
    ids, spans = train.chat_ids(tokenizer, turns)
    assert ids == conversation_ids(tokenizer, turns) and spans[-1][1] == len(ids)
    for (start, end), (_, answer) in zip(spans, turns):
        assert tokenizer.decode(ids[start:end]).strip() == answer and ids[end - 1] == tokenizer.eos_id
    assert ids[: spans[1][0]] == conversation_ids(tokenizer, [turns[0], (turns[1][0], None)])


def test_outside_pictures_are_seeded_and_held_out_photos_are_many():
    pytest.importorskip("skimage")
    a, b = conversations.outside_picture(3), conversations.outside_picture(3)
    assert a.size == (336, 336) and np.array_equal(np.asarray(a), np.asarray(b))
    chats = conversations.heldout_set("outside", 600)
    assert len({key for key, _ in chats}) >= 30 and sum(len(turns) for _, turns in chats) >= 600
    assert all(answer == conversations.OUTSIDE_ANSWER for _, turns in chats for _, _, answer in turns)
    # every held-out chat is as long as training's at most (13-turn chats of each photo once filled the context)
    for name in conversations.HELDOUT_SETS:
        assert max(len(turns) for _, turns in conversations.heldout_set(name, 600)) <= conversations.MAX_TURNS, name
    assert conversations.heldout_picture(chats[0][0]).mode == "RGB"
