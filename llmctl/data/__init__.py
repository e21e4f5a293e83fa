"""Data preparation: sources -> tokenizer -> HDF5 token shards (`llmctl data prepare`).

`sources` finds the documents, `tokenizer` trains or loads the BPE, `shards` owns
the on-disk format (writing and checked reading), `prepare` runs the whole thing.
"""
