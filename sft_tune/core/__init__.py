"""The core of a run, along its flow: `files` (reading data files, a config's files read and
checked), `data` (the token cache, arrays shared through Ray), `prepare` (a config's data split
and tokenized once), `batches` (padding, batching, the masking collator), `losses` (the phase
objective), `model` (task model + LM head on one backbone), `loop` (the two-phase training loop),
`splits` (validation splits and CV folds), `export` (atomic export of the task model). Nothing
here imports the sweep or the commands.
"""
