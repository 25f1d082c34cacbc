"""mtlib: the shared library of the MT fine-tuning book (QLoRA SFT and GRPO/DAPO, EN->DE, Multi30k).

Import submodules directly (``from mtlib import data, metrics``); nothing heavy is imported here, so
``import mtlib.modeling`` can put Unsloth first, before trl/transformers, as Unsloth requires.
"""
__version__ = "0.1.0"
