"""The sweep: Ray Tune + Optuna over the two-phase objective, each trial scored by k-fold CV.

Along the flow: `checks` (the whole input, before Ray imports), `folder` (every path and file of
a sweep), `searcher` (Optuna: what to try next), `cluster` (the Ray it runs on, what a trial
holds), `folds` (the fold loop a trial runs), `tuner` (the Tuner put together, new or restored),
`tracking` (W&B), `results` (the trial table, the best configuration, the verdict, the files)
and `run` (`run_search`, the whole sweep). Nothing is imported here, so reading a sweep folder
does not import Ray.
"""
