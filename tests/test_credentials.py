"""Secrets in one place: the token's sources, which values are secrets, scrubbing, the book's leak check."""
import importlib
import subprocess
import sys

from mtlib import credentials
from mtlib.credentials import REDACTED, find_secret, hf_token, looks_like_secret, scrub, secret_values

REAL_SHAPED = "hf_" + "Zx9" * 12                     # hf_ + 36 letters and digits, like a real token


def _no_token(monkeypatch):
    for var in credentials.TOKEN_VARS:
        monkeypatch.delenv(var, raising=False)


def test_hf_token_from_environment(monkeypatch):
    _no_token(monkeypatch)
    assert hf_token() is None  # not on Colab either
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hub-secret")
    assert hf_token() == "hub-secret"
    monkeypatch.setenv("HF_TOKEN", "fake-secret")
    assert hf_token() == "fake-secret"


def test_only_values_that_look_like_tokens_are_secrets(monkeypatch):
    assert looks_like_secret(REAL_SHAPED) and looks_like_secret("a-long-api-key-0123456789")
    for placeholder in ("none", "None", "0", "changeme", "", "hf_abc", "  hf_short  ", None):
        assert not looks_like_secret(placeholder), placeholder
    _no_token(monkeypatch)
    assert secret_values() == []
    monkeypatch.setenv("HF_TOKEN", "none")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", REAL_SHAPED)
    assert secret_values() == [REAL_SHAPED]


def test_a_placeholder_token_finds_no_leak(tmp_path, monkeypatch):
    """Issue 12: HF_TOKEN=none failed a finished build, since "none" appears in every notebook."""
    (tmp_path / "chapter.ipynb").write_text('{"outputs": [], "metadata": {"collapsed": "none"}}')
    _no_token(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "none")
    assert find_secret(tmp_path) == []
    monkeypatch.setenv("HF_TOKEN", REAL_SHAPED)
    assert find_secret(tmp_path) == []
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "page.html").write_text(f"<p>token={REAL_SHAPED}</p>")
    assert find_secret(tmp_path) == [tmp_path / "sub" / "page.html"]
    assert find_secret(tmp_path, ["elsewhere", "collapsed"]) == [tmp_path / "chapter.ipynb"]  # searched as given


def test_book_build_check_ignores_a_placeholder(tmp_path, monkeypatch):
    """The runner's last step: HF_TOKEN=none does not fail a finished build; a real-shaped leak does."""
    import pytest
    from mtlib import book
    from mtlib.errors import MtlibError
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "01_data.ipynb").write_text("{}")

    def execute(source, output, parameters, cwd, **kw):  # the chapter "ran": its output mentions none
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text('{"cells": [], "metadata": {"note": "none"}}')
        return output
    monkeypatch.setattr(book, "execute_chapter", execute)
    _no_token(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "none")
    out = book.build("smoke", tmp_path / "out", html=False, notebook_dir=tmp_path / "nb")
    assert (out / "book" / "executed" / "01_data.ipynb").is_file()
    monkeypatch.setenv("HF_TOKEN", REAL_SHAPED)
    (out / "leak.txt").write_text(REAL_SHAPED)
    with pytest.raises(MtlibError, match="leak.txt") as caught:
        book.build("smoke", tmp_path / "out", html=False, notebook_dir=tmp_path / "nb", resume=True)
    assert REAL_SHAPED not in str(caught.value)


def test_scrub_keeps_harmless_hf_names_and_redacts_token_shapes(monkeypatch):
    """Issue 12: scrub redacted every value starting with hf_ (hf_home, hf_transfer)."""
    _no_token(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "fake-secret-0123456789")
    record = {"cache": "hf_home", "env": ["hf_transfer", "HF_HUB_ENABLE_HF_TRANSFER"], "backend": "hf",
              "note": f"logged in with {REAL_SHAPED}.", "other": "uses fake-secret-0123456789",
              "hub_token": "short", "api_key": "x", "pad_token": "<|finetune_right_pad_id|>", "max_new_tokens": 64,
              "nested": [{"auth": "Bearer " + REAL_SHAPED}], "count": 3}
    got = scrub(record)
    assert got["cache"] == "hf_home" and got["env"] == ["hf_transfer", "HF_HUB_ENABLE_HF_TRANSFER"]
    assert got["backend"] == "hf" and got["pad_token"] == "<|finetune_right_pad_id|>" and got["count"] == 3
    assert got["note"] == got["other"] == got["hub_token"] == got["api_key"] == REDACTED   # shape, value, key
    assert got["nested"] == [{"auth": REDACTED}] and got["max_new_tokens"] == 64
    assert scrub("hf_home") == "hf_home" and scrub(REAL_SHAPED) == REDACTED
    monkeypatch.setenv("HF_TOKEN", "none")                 # a placeholder is not a secret: "none" stays
    assert scrub({"attn": "none"}) == {"attn": "none"}


def test_results_and_modeling_no_longer_import_each_other():
    """results imported modeling (hf_token) and modeling imported results (write_json): now both use credentials."""
    code = ("import sys, mtlib.results; assert 'mtlib.modeling' not in sys.modules, 'results imports modeling'; "
            "import mtlib.modeling as m, mtlib.credentials as c; assert m.hf_token is c.hf_token")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert importlib.import_module("mtlib.results").scrub is credentials.scrub


def test_scrub_redacts_secret_looking_keys_only_not_every_key_with_token_in_it(monkeypatch):
    """Issue 12: any key containing "token" was redacted, so {"tokenizer": "meta-llama/..."} lost the tokenizer's
    name. Secret-looking keys (token, hf_token, api_key, access_token, *_secret ...) and token-shaped values are
    redacted; tokenizer names, revisions and counts stay."""
    _no_token(monkeypatch)
    kept = {"tokenizer": "meta-llama/Llama-3.2-3B-Instruct",
            "tokenizer_revision": "0cb88a4f764b7a12671c53f0838cd831a0843b95", "tokenizer_name": "tiny",
            "max_new_tokens": 64, "num_tokens": "1234", "token_type_ids": "none",
            "pad_token": "<|finetune_right_pad_id|>", "eos_token": "<|eot_id|>", "model_revision": "main",
            "hf_home": "/root/.cache/huggingface"}
    assert scrub(kept) == kept
    secret = {"token": "abc", "hf_token": "x", "HF_TOKEN": "short", "access_token": "ya29.a0AfH6SMB",
              "accessToken": "tok", "api_key": "k", "wandb_api_key": "0123", "client_secret": "shh",
              "aws_secret_access_key": "wJalrXUtnFEMI", "password": "hunter2", "use_auth_token": "x"}
    assert scrub(secret) == {k: REDACTED for k in secret}
    shaped = {"note": f"token {REAL_SHAPED}", "header": "Authorization: Bearer abcdefghijklmnop1234",
              "gh": "ghp_" + "a1" * 18}
    assert scrub(shaped) == {k: REDACTED for k in shaped}
    assert scrub({"tokenizer": REAL_SHAPED}) == {"tokenizer": REDACTED}  # a token-shaped value, whatever the key
