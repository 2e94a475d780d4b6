"""A quantized chat model is evaluated through the same chat template as its full-precision
base (small scale, SmolLM2-135M-Instruct), and a tiny model never is: dry run."""

from __future__ import annotations

import re

from tests.helpers import dry_run


def _eval_commands(snakemake_bin, root, scale, targets):
    # -f: the targets' own jobs are listed even when a finished run left them in the tree
    rc, out = dry_run(snakemake_bin, root, "-p", "-f", "--config", f"scale={scale}", "--", *targets)
    assert rc == 0, out[-2000:]
    cmds = [line for line in out.splitlines() if "benchmarks.lm_eval_suite" in line]
    return {re.search(r"--variant (\S+)", c).group(1): c for c in cmds}


def test_quantized_smollm2_uses_its_chat_template(snakemake_bin, root):
    runs = "results/runs/small"
    cmds = _eval_commands(
        snakemake_bin,
        root,
        "small",
        [
            f"{runs}/base/smollm2/lm_eval.json",
            f"{runs}/d2quant/gptq-w2/lm_eval.json",
            f"{runs}/nsds/smollm2-nsds-b3/lm_eval.json",
            f"{runs}/nsds/planted-nsds-b3/lm_eval.json",
        ],
    )
    for variant in ("smollm2", "gptq-w2", "smollm2-nsds-b3"):
        assert "--chat-template" in cmds[variant], variant
    assert "--chat-template" not in cmds["planted-nsds-b3"]


def test_tiny_models_use_no_chat_template(snakemake_bin, root):
    cmds = _eval_commands(
        snakemake_bin, root, "tiny", ["results/runs/tiny/d2quant/gptq-w2/lm_eval.json"]
    )
    assert cmds and all("--chat-template" not in c for c in cmds.values())


# --- Paper-scale prompts through each model's chat template (methods/posttrain/DATA.md) ---------
# Micro tokenizers carry the parts of the real templates that matter here: Qwen3's
# ``enable_thinking`` switch, Qwen2.5's system turn, DeepSeek-R1-Distill's User/Assistant tokens.

QWEN3 = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\n\n</think>\n\n' }}{% endif %}{% endif %}"
)
QWEN25 = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
R1_DISTILL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% else %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\n' }}{% endif %}"
)
Q = "What is $1/2 + 1/3$?"


def _tok(template=None):
    from claimbench.micro import micro_tokenizer

    tok = micro_tokenizer()
    tok.chat_template = template
    return tok


def test_qwen3_non_thinking_prompt():
    from methods.posttrain.data import BOXED_INSTRUCTION, format_prompt

    text = format_prompt(_tok(QWEN3), Q, "qwen3_nothink")
    assert text == (
        f"<|im_start|>user\n{Q} {BOXED_INSTRUCTION}<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_psft_system_turn_replaces_the_default_one():
    from methods.posttrain.data import BOXED_INSTRUCTION, format_prompt

    text = format_prompt(_tok(QWEN25), Q, "boxed_system")
    assert text.startswith(f"<|im_start|>system\n{BOXED_INSTRUCTION}<|im_end|>\n")
    assert "Alibaba" not in text and text.endswith(f"user\n{Q}<|im_end|>\n<|im_start|>assistant\n")


def test_r1_distill_prompt_has_no_system_turn():
    from methods.posttrain.data import BOXED_INSTRUCTION, format_prompt

    tok = _tok(R1_DISTILL)
    tok.bos_token = "<｜begin▁of▁sentence｜>"
    text = format_prompt(tok, Q, "r1_distill")
    assert text == (
        f"<｜begin▁of▁sentence｜><｜User｜>{Q}\n{BOXED_INSTRUCTION}<｜Assistant｜><think>\n"
    )


def test_orz_prompt_needs_no_chat_template():
    from methods.posttrain.data import format_prompt

    text = format_prompt(_tok(None), Q, "orz")
    assert text.startswith("A conversation between User and Assistant.")
    assert f"This is the problem:\n{Q}\n\nAssistant: <think>" in text and text.endswith("<think>")
    assert "\\boxed{} tag" in text and "<|im_start|>" not in text
    assert format_prompt(_tok(None), Q, "plain") == Q


def test_chat_format_without_a_template_or_unknown_format_fails():
    import pytest

    from methods.posttrain.data import format_prompt

    with pytest.raises(ValueError, match="has no chat template"):
        format_prompt(_tok(None), Q, "qwen3_nothink")
    with pytest.raises(ValueError, match="'qwen4'"):
        format_prompt(_tok(QWEN3), Q, "qwen4")


# --- Stops: newline at tiny/small, EOS or the template's end token at the paper scale -------------


def _memorizer():
    """A micro Llama that has memorised ``Q: 7 <answer lines> <|im_end|>`` (greedy replays it)."""
    import torch
    import transformers

    tok = _tok(QWEN3)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    prompt = tok("Q: 7", add_special_tokens=False)["input_ids"]
    comp = tok(" 1\n2\n3\nso 4", add_special_tokens=False)["input_ids"] + [end]
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    ids = torch.tensor([prompt + comp])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(120):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok, comp


def test_rollouts_stop_at_newline_only_at_tiny_and_small():
    from methods.posttrain.sampling import end_token_ids, sample, stop_token_ids

    model, tok, comp = _memorizer()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    newline = [i for i in range(len(tok)) if "\n" in tok.decode([i])]
    assert newline and set(newline) <= set(stop_token_ids(tok))
    assert stop_token_ids(tok) == stop_token_ids(tok, "newline")  # tiny/small: unchanged default
    ends = end_token_ids(tok)
    assert end in ends and tok.eos_token_id in ends and not set(newline) & set(ends)

    # tiny/small: the first line only
    ro = sample(model, tok, ["Q: 7"], greedy=True, max_new_tokens=32)
    assert ro.texts == [" 1"] and ro.truncated == [False]
    # paper: every line, up to the template's end token (kept in the loss mask, not the text)
    ro = sample(model, tok, ["Q: 7"], greedy=True, max_new_tokens=32, stop="eos")
    assert ro.texts == [" 1\n2\n3\nso 4"] and ro.truncated == [False]
    assert ro.batch.n_tokens == len(comp)
    assert ro.batch.input_ids[0, ro.batch.attention_mask[0].sum() - 1].item() == end
    # max_new_tokens is honoured: cut after 3 tokens, marked truncated
    ro = sample(model, tok, ["Q: 7"], greedy=True, max_new_tokens=3, stop="eos")
    assert ro.truncated == [True] and ro.batch.n_tokens == 3 and "\n" in ro.texts[0]


def test_unknown_stop_is_refused():
    import pytest

    from methods.posttrain.sampling import stop_token_ids

    with pytest.raises(ValueError, match="'never'"):
        stop_token_ids(_tok(), "never")


def test_a_changed_micro_tokenizer_leaves_the_next_one_alone():
    """Tests that set a template or a special token on their micro tokenizer must not change
    another test's (a shared cached object once grew the vocabulary past the models')."""
    from claimbench.micro import micro_tokenizer

    tok = micro_tokenizer()
    n, template = len(tok), tok.chat_template
    tok.chat_template = None
    tok.bos_token = "<｜begin▁of▁sentence｜>"
    fresh = micro_tokenizer()
    assert template and tok.chat_template is None and tok.bos_token == "<｜begin▁of▁sentence｜>"
    assert (len(fresh), fresh.chat_template) == (n, template)
    assert fresh.bos_token != tok.bos_token
