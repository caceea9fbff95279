"""One function per table or figure of each notebook (:mod:`.mlp`, :mod:`.transformer`,
:mod:`.gemma`, :mod:`.seeds`, :mod:`.causal`), and the notebooks' parameter checks
(:mod:`.parameters`). This is where caching and output writing live; it may import every
other layer."""
