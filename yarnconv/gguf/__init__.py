"""GGUF (llama.cpp): ``file`` reads and checks headers, ``keys`` maps a rope block to llama.cpp's
keys, ``vocab`` the tokenizer, ``export_plan`` decides an HF -> GGUF conversion and ``export``
writes it through gguf-py, ``patch`` edits rope keys without touching tensor bytes, ``report``
is what ``inspect`` says. (Not to be confused with the ``gguf`` package from gguf-py.)"""
