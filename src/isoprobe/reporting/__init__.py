"""The report of a whole run, from the DVC-tracked files only: the one reader of a run's files
(`reading`: typed fine-tuning runs, isotropy, probing, skipped outputs, dropped rows), the numbers
shown (`numbers`: seed statistics, comparisons with baseline, the results table, probing medians,
on top of `stats`), the HTML building blocks (`html`), figures (`plots`), the report itself
(`report`), the report stage's publishing (`run`: temporary build, MLflow run, atomic moves) and the
Markdown tables of `isoprobe results` (`results`).

Imports: `core`, `probing` (the flat per-layer probe metrics).
"""
