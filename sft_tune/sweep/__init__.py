"""The sweep: Ray Tune + Optuna over the two-phase objective, each trial scored by k-fold CV.

Along the flow: `space` (the search-space file: parsed and checked), `checks` (the whole input,
before Ray imports), `folder` (every path and file of a sweep), `searcher` (Optuna: what to try
next), `cluster` (the Ray it runs on, what a trial holds), `folds` (the fold loop a trial runs),
`tuner` (the Tuner put together, new or restored), `tracking` (W&B), `records` (what each trial
did: the `Trial` record, the trial files and table), `ranking` (the ranking rule, the choice, the
phase-1 verdict, with the paired statistics of `paired`), `results` (the summary a sweep ends
with) and `run` (`run_search`, the whole sweep). Nothing is imported here, so reading a sweep
folder does not import Ray.
"""
