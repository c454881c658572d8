"""The verifiable toy task: multi-step integer arithmetic, its char-level tokenizer and its ``oracle`` judge.

Import the submodules directly (``vcrd_arithmetic.grammar``, ``vcrd_arithmetic.char_tokenizer``); this
package imports nothing so that the grammar stays free of ``transformers``.
"""
