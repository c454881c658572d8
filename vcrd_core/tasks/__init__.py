"""Toy tasks shipped with the core: the arithmetic grammar and its char-level tokenizer.

Import the submodules directly (``vcrd_core.tasks.arithmetic``, ``vcrd_core.tasks.char_tokenizer``);
this package imports nothing so that the grammar stays free of ``transformers``.
"""
