"""The ``chat`` format (:mod:`flanpipe.core.tokens.chat`) with a real instruct checkpoint's template
(SmolLM2-135M-Instruct): packed rows against ``transformers``' ``apply_chat_template`` on FLAN
examples rendered from the embedded data, the loss mask against the prompt's own rendering, the
evaluation format, generation, and the refusals."""

import json
import shutil

import numpy as np
import pytest

from flanpipe.core.config import ConfigError, EvaluateSlice, PackSlice, parse_config
from flanpipe.core.tokens.chat import ChatTemplate, ChatTemplateError, chat_template
from flanpipe.core.tokens.formats import Format
from flanpipe.core.tokens.shards import PackedShards
from flanpipe.core.tokens.tokenizers import load_tokenizer
from flanpipe.stages.pack import tokenize_and_pack
from tests.unit.test_tokenizer import write_mixture

pytestmark = pytest.mark.usefixtures("one_thread")


def flan_rows(per_dataset: int = 12) -> tuple[list[str], list[str]]:
    """Every template of every embedded dataset on its first rows: real FLAN instructions (passages,
    OPTIONS suffixes, German news, turned-around tasks) and their targets."""
    from flanpipe.core.config.registry import embedded_datasets, load_registry
    from flanpipe.core.text.templates import load_bank, render_template
    from flanpipe.core.text.validate import check_split
    from flanpipe.stages.download import read_embedded_split

    registry, bank = load_registry(), load_bank()
    inputs, targets = [], []
    for name in embedded_datasets():
        spec = registry.datasets[name]
        split = spec.split_roles.get("train") or spec.split_roles["eval"]
        records, bad, _ = read_embedded_split(spec, split)
        raw = check_split(records, spec, split, bad).table.slice(0, per_dataset)
        for template in bank[name].templates:
            rendered = render_template(bank[name], template, raw, "dash")
            inputs += rendered.inputs.to_pylist()
            targets += rendered.targets.to_pylist()
    return inputs, targets


@pytest.fixture(scope="module")
def rows():
    return flan_rows()


@pytest.fixture(scope="module")
def peer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir), local_files_only=True)


def ids_of(encoding) -> list[int]:
    return list(encoding["input_ids"] if not isinstance(encoding, list) else encoding)


def peer_tokens(peer, user: str, reply: str | None = None) -> list[int]:
    messages = [{"role": "user", "content": user}]
    if reply is not None:
        messages.append({"role": "assistant", "content": reply})
    return ids_of(peer.apply_chat_template(messages, tokenize=True, add_generation_prompt=reply is None))


def pack_chat(smollm2_dir, shards, out, li, lt, **tokenize):
    cfg = parse_config({"seed": 5, "train": {"steps": 2, "tokens_per_batch": 64,
                                             "model": {"source": "pretrained", "path": str(smollm2_dir)}},
                        "tokenize": {"format": "chat", "max_input_tokens": li, "max_target_tokens": lt,
                                     "pack_window": 512, "rows_per_shard": 64, **tokenize}})
    manifest = tokenize_and_pack("m", shards, smollm2_dir / "tokenizer.json", out, PackSlice.of(cfg),
                                 threads=2)
    return manifest, PackedShards(out)


def segments(shards: PackedShards) -> list[tuple[tuple[int, ...], int]]:
    """Each packed example as (its tokens in row order, where its loss mask starts), checking that
    the mask is one run of ones that ends the segment."""
    out = []
    for i in range(len(shards)):
        row = shards[i]
        for s in range(1, int(row["segment_ids"].max()) + 1):
            at = row["segment_ids"] == s
            tokens, mask = row["tokens"][at].tolist(), row["loss_mask"][at].astype(int)
            start = int(np.argmax(mask))
            assert mask[start:].all() and not mask[:start].any(), "the loss mask is not the segment's tail"
            assert row["positions"][at].tolist() == list(range(len(tokens)))  # segments stay apart
            out.append((tuple(tokens), start))
    return out


def test_packed_rows_are_apply_chat_template_with_the_loss_on_the_assistant_turn(smollm2_dir, rows, peer,
                                                                                 tmp_path):
    """1560 FLAN examples: every packed example's tokens equal ``apply_chat_template`` on its two
    messages (SmolLM2's default system turn included), and its loss mask starts right after the
    tokens of ``apply_chat_template`` on the user turn with the generation prompt, so it covers
    ``target<|im_end|>\\n``: the assistant turn as the template writes it."""
    inputs, targets = rows
    assert len(inputs) > 1000
    shards = write_mixture(tmp_path / "mix", inputs, targets, rows_per_shard=400)
    manifest, packed = pack_chat(smollm2_dir, shards, tmp_path / "packed", li=1024, lt=256)
    assert manifest["packing"]["truncated_inputs"] == manifest["packing"]["truncated_targets"] == 0
    assert manifest["format"] == "chat" and manifest["tokenizer"]["bos_added"] is False
    assert manifest["chat"]["verbatim"] is True and manifest["chat"]["replies_merged"] == 0
    assert manifest["chat"]["split_at_tail"] is True  # the prompts' tokens taken from the whole's

    expected = []
    conversations = [[{"role": "user", "content": u}, {"role": "assistant", "content": r}]
                     for u, r in zip(inputs, targets, strict=True)]
    wholes = peer.apply_chat_template(conversations, tokenize=True)["input_ids"]
    prompts = peer.apply_chat_template([[{"role": "user", "content": u}] for u in inputs], tokenize=True,
                                       add_generation_prompt=True)["input_ids"]
    replies = peer(targets, add_special_tokens=False)["input_ids"]
    for whole, prompt, reply in zip(wholes, prompts, replies, strict=True):
        assert whole[:len(prompt)] == prompt  # the prefix property, on real rows
        assert whole[len(prompt):] == reply + [2, 198]
        expected.append((tuple(whole), len(prompt)))
    assert sorted(segments(packed)) == sorted(expected)
    first = peer.decode(list(expected[0][0]))
    assert first.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


@pytest.mark.parametrize("truncate", ["right", "left"])
def test_long_examples_are_cut_inside_the_content_and_keep_the_template(smollm2_dir, rows, peer, tmp_path,
                                                                        truncate):
    """At 48 input and 6 target tokens: every prompt keeps the template's start (system turn,
    ``<|im_start|>user\\n``) and its end (``<|im_end|>\\n<|im_start|>assistant\\n``), the user's
    content cut from the right or the left; every reply keeps its ``<|im_end|>\\n``."""
    inputs, targets = rows[0][::10], rows[1][::10]
    shards = write_mixture(tmp_path / "mix", inputs, targets)
    manifest, packed = pack_chat(smollm2_dir, shards, tmp_path / "p", li=48, lt=6, truncate_inputs=truncate)
    assert manifest["packing"]["truncated_inputs"] > 0 and manifest["packing"]["truncated_targets"] > 0
    head = peer.encode(peer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False)
                       .split("<|im_end|>\n<|im_start|>user\n")[0] + "<|im_end|>\n<|im_start|>user\n",
                       add_special_tokens=False)
    tail = peer.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    by_tokens = {}
    for user, reply in zip(inputs, targets, strict=True):
        prompt = peer_tokens(peer, user)
        by_tokens.setdefault((tuple(prompt[:len(head)]), tuple(peer_tokens(peer, user, reply)[len(prompt):])),
                             []).append(prompt)
    for tokens, start in segments(packed):
        prompt, reply = list(tokens[:start]), list(tokens[start:])
        assert len(prompt) <= 48 and len(reply) <= 6 and reply[-2:] == [2, 198]
        assert prompt[:len(head)] == head and prompt[-len(tail):] == tail
        content = prompt[len(head):len(prompt) - len(tail)]
        full = [p[len(head):len(p) - len(tail)] for p in sum(by_tokens.values(), [])]
        if truncate == "right":
            assert any(c[:len(content)] == content for c in full)
        else:
            assert any(c[len(c) - len(content):] == content for c in full)


def test_a_reply_that_merges_into_the_prompt_is_counted_and_keeps_its_own_tokens(smollm2_dir, tmp_path):
    """A target starting with two spaces joins the generation prompt's newline into one token
    (``"\n "``) in the whole rendering: no split there gives the prompt's own tokens, so the reply
    takes its own tokens (what a model generates after the prompt), and the manifest counts it."""
    shards = write_mixture(tmp_path / "mix", ["Say hi.", "Say bye."], ["  hi", "bye"])
    manifest, packed = pack_chat(smollm2_dir, shards, tmp_path / "p", li=64, lt=16)
    assert manifest["chat"]["replies_merged"] == 1
    tok = load_tokenizer(smollm2_dir)
    got = {tuple(t[s:]) for t, s in segments(packed)}
    assert tuple(tok.encode("  hi") + [2, 198]) in got and tuple(tok.encode("bye") + [2, 198]) in got


def template_folder(smollm2_dir, tmp_path, template: str | None):
    """SmolLM2's tokenizer in a folder of its own, with ``template`` as its chat template (None: none)."""
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(smollm2_dir / name, folder / name)
    if template is not None:
        (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    return folder


def test_a_tokenizer_without_a_chat_template_is_refused(smollm2_dir, tmp_path):
    folder = template_folder(smollm2_dir, tmp_path, None)
    shutil.copyfile(smollm2_dir / "config.json", folder / "config.json")
    with pytest.raises(ConfigError, match=r"tokenize.format: chat, but the checkpoint .* has no chat"):
        parse_config({"train": {"model": {"source": "pretrained", "path": str(folder)}},
                      "tokenize": {"format": "chat"}})
    shards = write_mixture(tmp_path / "mix", ["a question"], ["an answer"])
    cfg = parse_config({"train": {"model": {"source": "pretrained", "path": str(smollm2_dir)}},
                        "tokenize": {"format": "chat"}})
    with pytest.raises(ChatTemplateError, match="tokenize.format: chat needs a tokenizer with a chat"):
        tokenize_and_pack("m", shards, folder, tmp_path / "p", PackSlice.of(cfg))
    with pytest.raises(ChatTemplateError, match="has none"):
        Format.of(load_tokenizer(folder), EvaluateSlice.of(cfg), name="chat").inputs(["x"])


@pytest.mark.parametrize(("config", "message"), [
    ({"tokenize": {"format": "chat"}}, "tokenize.format: chat renders examples through a pretrained"),
    ({"tokenize": {"format": "chat", "model_kind": "encoder_decoder"},
      "train": {"model": {"architecture": "t5"}}},
     "tokenize.format: chat needs tokenize.model_kind: decoder_only"),
    ({"tokenize": {"format": "chat", "add_bos": True}}, "tokenize.add_bos: true with tokenize.format: chat"),
])
def test_config_refuses_chat_where_it_cannot_work(config, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(config)


def test_a_template_whose_prompt_is_not_a_prefix_is_refused(smollm2_dir, tmp_path):
    """The generation prompt says ``assistant``, the rendered reply ``bot``: the assistant turn
    cannot be told apart."""
    template = ("{% for m in messages %}<|im_start|>{{ 'bot' if m['role'] == 'assistant' else m['role'] }}\n"
                "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    folder = template_folder(smollm2_dir, tmp_path, template)
    with pytest.raises(ChatTemplateError, match="not render the user turn with its generation prompt"):
        ChatTemplate(load_tokenizer(folder), template)


def test_a_template_that_trims_content_is_rendered_per_row_as_apply_chat_template(smollm2_dir, tmp_path):
    """Llama 3's templates trim each message: the wrapper learned once would keep the spaces, so
    such a template renders per row, and still gives ``apply_chat_template``'s tokens."""
    from transformers import AutoTokenizer

    template = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}"
                "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    folder = template_folder(smollm2_dir, tmp_path, template)
    chat = ChatTemplate(load_tokenizer(folder), template)
    assert chat.verbatim is chat.split_at_tail is False
    assert chat.head.startswith("<|im_start|><|im_start|>user")
    peer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    users, replies = ["  padded question \n", "plain"], [" spaced answer ", "x"]
    got = chat.encode(users, replies)
    for u, r, p, a in zip(users, replies, got.prompts, got.replies, strict=True):
        assert p.tolist() + a.tolist() == peer_tokens(peer, u, r)
        assert p.tolist() == peer_tokens(peer, u)


def test_the_chat_format_scores_options_as_the_assistant_turn(smollm2_dir, peer, rows):
    """Evaluation's prompt is ``apply_chat_template`` of the user turn with the generation prompt;
    each option is what the whole conversation with that option as the reply adds after it, its
    ``<|im_end|>\\n`` included; counts are the prompts' lengths; generation stops at ``<|im_end|>``."""
    cfg = parse_config({"train": {"model": {"source": "pretrained", "path": str(smollm2_dir)}},
                        "tokenize": {"format": "chat"}})
    tok = load_tokenizer(smollm2_dir)
    fmt = Format.of(tok, EvaluateSlice.of(cfg), name="chat")
    prompts = rows[0][:40:4]
    options = [["yes", "no", "it is not possible to tell"]] * len(prompts)
    assert fmt.inputs(prompts) == [peer_tokens(peer, p) for p in prompts]
    assert fmt.counts(prompts).tolist() == [len(peer_tokens(peer, p)) for p in prompts]
    for prompt, opts, got in zip(prompts, options, fmt.options(prompts, options), strict=True):
        n = len(peer_tokens(peer, prompt))
        assert got == [peer_tokens(peer, prompt, o)[n:] for o in opts]
    assert chat_template(tok).stop_id == peer.convert_tokens_to_ids("<|im_end|>")
    with pytest.raises(ValueError, match="tokenize.max_input_tokens 20 cannot hold"):
        chat_template(tok).check_budgets(20, 16)


def test_generate_in_chat_equals_transformers_generate_on_the_chat_prompt(smollm2_dir, peer):
    """``flanpipe generate --format chat`` on SmolLM2-Instruct: the same greedy tokens as
    ``transformers``' ``generate`` on ``apply_chat_template``'s prompt, stopped at ``<|im_end|>``."""
    import torch
    from transformers import AutoModelForCausalLM

    from flanpipe.stages.evaluate import generate_text

    prompt = "What is the capital of France? Answer in one word."
    got = generate_text(smollm2_dir, [prompt], max_new_tokens=12, format_name="chat")
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), local_files_only=True,
                                                 dtype=torch.float32).eval()
    ids = torch.tensor([peer_tokens(peer, prompt)])
    out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=2, pad_token_id=2)
    new = out[0, ids.shape[1]:].tolist()
    new = new[:new.index(2)] if 2 in new else new
    assert got == [peer.decode(new)] and got[0].strip()


def test_a_model_trained_in_chat_is_scored_in_chat(tmp_path):
    from flanpipe.stages.evaluate import model_format

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "flanpipe.json").write_text(json.dumps({"format": "chat", "separator": None}))
    assert model_format(tmp_path) == ("chat", "trained", None)


def test_evaluate_scores_the_instruct_base_in_chat_beside_continuation(smollm2_dir, peer, tmp_path):
    """``evaluate_dataset`` on SmolLM2-Instruct (RTE, 3 examples, one template) in a chat run: the
    base is scored in its own ``continuation`` format and in the run's ``chat`` beside it (the fair
    evaluation's pair). Its chat scores per example are those of argmax of ``transformers``' own
    log-likelihood of each option's assistant turn after ``apply_chat_template``'s prompt."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    from flanpipe.core.text.templates import load_bank, render_template
    from flanpipe.stages.download import download_dataset
    from flanpipe.stages.evaluate import eval_sample, evaluate_dataset

    cfg = parse_config({"train": {"model": {"source": "pretrained", "path": str(smollm2_dir)}},
                        "tokenize": {"format": "chat"},
                        "evaluate": {"max_examples": 3, "max_templates": 1, "precision": "fp32"}})
    raw = tmp_path / "raw/rte"
    download_dataset("rte", cfg.download.source_for("rte"), raw, cfg.seed)
    base = evaluate_dataset("rte", smollm2_dir, raw, tmp_path / "base.json", EvaluateSlice.of(cfg),
                            few_shot=False, model_name="base")
    assert (base["format"], list(base["by_format"])) == ("continuation", ["continuation", "chat"])

    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), local_files_only=True,
                                                 dtype=torch.float32).eval()
    bank = load_bank()["rte"]
    table = eval_sample(pq.read_table(raw / "eval.parquet"), 3, cfg.seed, "rte")
    rendered = render_template(bank, bank.eval_templates[0], table, cfg.templatize.options)
    right = []
    for prompt, options, gold in zip(rendered.inputs.to_pylist(), rendered.options.to_pylist(),
                                     rendered.answer_index, strict=True):
        n = len(peer_tokens(peer, prompt))
        scores = []
        for option in options:
            ids = torch.tensor([peer_tokens(peer, prompt, option)])
            with torch.no_grad():
                logp = model(input_ids=ids).logits.log_softmax(-1)[0, n - 1:-1]
            scores.append(float(logp.gather(-1, ids[0, n:, None]).sum()))
        right.append(100.0 * (np.argmax(scores) == gold))
    assert base["headline_variant"] == "with_options/sum"
    assert base["by_format"]["chat"]["example_scores"] == [right]


def test_the_trainer_loss_is_transformers_loss_on_the_assistant_tokens(smollm2_dir, peer, rows, tmp_path):
    """Three FLAN examples packed in chat: the training wrapper's per-token losses sum
    to what ``transformers`` computes on each ``apply_chat_template`` conversation alone with every
    token before the assistant turn labelled -100, over the same number of tokens."""
    import torch

    from flanpipe.core.model.causal import PackedCausalLM
    from flanpipe.core.model.checkpoint import load_checkpoint
    from flanpipe.stages.train import to_batch

    picks = [5, 400, 900]
    users, replies = [rows[0][i][:200] for i in picks], [rows[1][i][:100] for i in picks]
    shards = write_mixture(tmp_path / "mix", users, replies)
    manifest, packed = pack_chat(smollm2_dir, shards, tmp_path / "p", li=128, lt=64)
    assert manifest["packing"]["truncated_inputs"] == manifest["packing"]["truncated_targets"] == 0
    model, _ = load_checkpoint(smollm2_dir)
    with torch.no_grad():
        ours = PackedCausalLM(model)(**to_batch(packed.take(np.arange(len(packed))), torch.device("cpu")))
    total, count = 0.0, 0
    for user, reply in zip(users, replies, strict=True):
        ids = torch.tensor([peer_tokens(peer, user, reply)])
        labels = ids.clone()
        labels[0, :len(peer_tokens(peer, user))] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss
        n = int((labels[0, 1:] != -100).sum())
        total, count = total + float(loss) * n, count + n
    assert len(ours) == count
    assert float(ours.sum()) == pytest.approx(total, rel=1e-4)


def test_a_template_that_rewrites_some_contents_only_is_caught_by_the_spot_check(smollm2_dir, tmp_path):
    """A template that rewrites only contents holding ``</think>`` (as Qwen3's does) passes the
    probes; the batch's spot check against Jinja finds the row and renders per row from then on."""
    from transformers import AutoTokenizer

    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'].split('</think>')[-1] }}"
                "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    folder = template_folder(smollm2_dir, tmp_path, template)
    chat = ChatTemplate(load_tokenizer(folder), template)
    assert chat.verbatim is True
    users, replies = ["a question", "hidden</think>shown"], ["an answer", "reply"]
    got = chat.encode(users, replies)
    assert chat.verbatim is False
    peer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    for u, r, p, a in zip(users, replies, got.prompts, got.replies, strict=True):
        assert p.tolist() + a.tolist() == peer_tokens(peer, u, r) and p.tolist() == peer_tokens(peer, u)
