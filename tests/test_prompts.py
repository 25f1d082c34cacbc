"""mtlib.prompts: the chat template renders a fixed date, so the same profile builds the same prompts every day."""
import datetime

from mtlib import modeling, prompts

# The date logic of Llama 3.2's chat template, in front of the tiny model's template.
LLAMA_DATE = ('{%- if not date_string is defined %}{%- if strftime_now is defined %}'
              '{%- set date_string = strftime_now("%d %b %Y") %}{%- else %}{%- set date_string = "26 Jul 2024" %}'
              '{%- endif %}{%- endif %}Today Date: {{ date_string }}\n')


def render(tokenizer, **kw):
    return tokenizer.apply_chat_template(prompts.inference_messages("A dog runs."), tokenize=False,
                                         add_generation_prompt=True, **kw)


def test_template_date_is_fixed_not_today(tiny_dir):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    tokenizer.chat_template = LLAMA_DATE + tokenizer.chat_template
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
