"""mtlib.prompts: the chat template renders a fixed date, so the same profile builds the same prompts every day."""
import datetime

import pytest

from mtlib import modeling, prompts, tiny


def render(tokenizer, **kw):
    return tokenizer.apply_chat_template(prompts.inference_messages("A dog runs."), tokenize=False,
                                         add_generation_prompt=True, **kw)


def test_template_date_is_fixed_not_today():
    tokenizer = tiny.twin_tokenizer(["ein Hund", "a dog"] * 50)  # Llama 3.2's own template, date lines included
    today = datetime.datetime.now().strftime("%d %b %Y")
    assert f"Today Date: {today}" in render(tokenizer)  # the problem: the prompt changes with the calendar
    prompts.fix_template_date(tokenizer)
    prompts.fix_template_date(tokenizer)  # idempotent
    assert tokenizer.chat_template.count("date_string is not defined") == 1
    assert f"Today Date: {prompts.PROMPT_DATE}" in render(tokenizer)
    assert "Today Date: 01 Jan 2030" in render(tokenizer, date_string="01 Jan 2030")  # an explicit date still wins
    assert prompts.template_date(tokenizer) == prompts.PROMPT_DATE


def test_loaded_tokenizers_carry_the_fixed_date(tiny_dir):
    _, tokenizer = modeling.load_model(tiny_dir, load_in_4bit=False, backend="hf")
    assert prompts.template_date(tokenizer) == prompts.PROMPT_DATE


def test_language_name_names_the_pairs_of_the_book_and_falls_back_to_the_code():
    assert [prompts.language_name(c) for c in ("en", "de", "fr", "cs")] == ["English", "German", "French", "Czech"]
    assert prompts.language_name("FR") == "French" and prompts.language_name("fr-CA") == "French"
    assert prompts.language_name("pt_BR") == "Portuguese"
    assert prompts.language_name("xx") == "xx"  # unknown: the code itself, so prose still names something
    with pytest.raises(ValueError, match="language code"):
        prompts.language_name("")


def test_system_prompt_names_the_target_language():
    assert "English text into French" in prompts.system_prompt("fr", "en")
    assert "German" not in prompts.system_prompt("fr", "en")


def test_preamble_follows_the_target_language_with_an_english_fallback():
    assert prompts.preamble("de") == "Hier ist die Übersetzung: "
    assert prompts.preamble("fr").startswith("Voici la traduction")
    assert prompts.preamble("cs").startswith("Zde je překlad")
    assert prompts.preamble("xx") == prompts.preamble("en") == "Here is the translation: "
    assert all(p.endswith(" ") for p in prompts.PREAMBLES.values())  # a completion follows directly


def test_grpo_token_lengths_count_what_the_model_reads(tiny_dir):
    """One batch call gives, for every row, the tokens of the rendered prompt and of the reference, as the
    tokenizer counts them one at a time."""
    tokenizer = modeling.load_model(str(tiny_dir), backend="hf")[1]
    rows = prompts.to_grpo_dataset(__import__("datasets").Dataset.from_dict(
        {"en": ["A dog runs.", "Two men play chess in a park."], "de": ["Ein Hund rennt.", "Zwei Männer spielen."]}))
    one_by_one = [len(tokenizer(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
                                add_special_tokens=False).input_ids) for p in rows["prompt"]]
    lengths = prompts.grpo_token_lengths(tokenizer, rows)
    assert lengths["prompt"] == one_by_one and lengths["prompt"][1] > lengths["prompt"][0]
    assert lengths["reference"] == [len(tokenizer(r, add_special_tokens=False).input_ids) for r in rows["reference"]]
    shuffled = rows.select([1, 0])  # a Dataset with an indices mapping: its columns are read in that order
    assert prompts.grpo_token_lengths(tokenizer, shuffled)["prompt"] == one_by_one[::-1]
    assert prompts.grpo_token_lengths(tokenizer, rows.to_dict()) == lengths


@pytest.mark.parametrize("before", [None, "false"])
def test_bulk_token_counts_use_every_core_and_leave_the_setting_as_it_was(monkeypatch, before):
    """Importing Unsloth sets TOKENIZERS_PARALLELISM=false; mtlib's bulk counts turn it on for their one batch
    call only, so processes forked later keep Unsloth's setting (or none)."""
    import os
    if before is None:
        monkeypatch.delenv(prompts.PARALLELISM_ENV, raising=False)
    else:
        monkeypatch.setenv(prompts.PARALLELISM_ENV, before)
    seen = []

    class Backend:
        def encode_batch(self, texts, add_special_tokens):
            seen.append(os.environ.get(prompts.PARALLELISM_ENV))
            return [type("Encoding", (), {"ids": t.split()})() for t in texts]

    tokenizer = type("Tok", (), {"is_fast": True, "backend_tokenizer": Backend()})()
    assert prompts.token_counts(tokenizer, ["a b", "c"]) == [2, 1]
    assert seen == ["true"] and os.environ.get(prompts.PARALLELISM_ENV) == before
    with pytest.raises(RuntimeError), prompts.parallel_tokenization():
        raise RuntimeError("a failed batch")
    assert os.environ.get(prompts.PARALLELISM_ENV) == before
